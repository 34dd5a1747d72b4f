"""`semiofed predict`: de-identify a video in memory and classify it with a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from semiofed.common.constants import STCNN_INPUT_FRAME, STCNN_INPUT_PATIENT
from semiofed.cli.output import OutputFormat, emit, format_option
from semiofed.common.errors import SemiofedError


def predict(
    video: Path = typer.Argument(..., help="The seizure video to classify (never written anywhere)."),
    model: Path = typer.Option(..., "--model", help="Checkpoint directory written by `semiofed site train`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the timeline PNG (default: the current directory)."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="Model files directory (MediaPipe, STCNN)."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Classify a seizure video: calibrated class probabilities and a timeline plot with generalisation time."""
    from semiofed.client.training.predict import predict_record, write_timeline_png
    from semiofed.common.learning.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(model)  # verify the model before the slow de-identification
    from semiofed.client.deid.prepare import deidentify_video

    if not video.is_file():
        raise SemiofedError(f"video {video} does not exist", "give the path of a video file")
    extractor = checkpoint.meta.get("feature_extractor", {})
    # a model's records were made as it says; one from before the STCNN input was stored saw GESTURES' centre crop
    stcnn_input = extractor.get("input") or (STCNN_INPUT_FRAME if extractor.get("sha256") else STCNN_INPUT_PATIENT)
    record = deidentify_video(video, model_dir=model_dir, stcnn=extractor.get("name") or "i3d", stcnn_input=stcnn_input)
    prediction = predict_record(checkpoint, record)
    png = write_timeline_png(prediction, (out or Path.cwd()) / f"{video.stem}_timeline.png", title=video.name)
    report = {"video": str(video), "predicted": prediction.predicted, "confidence": prediction.confidence,
              "probabilities": prediction.probabilities, "temperature": prediction.temperature,
              "generalisation_s": prediction.generalisation_s, "timeline_png": str(png)}

    def print_table() -> None:
        console = Console()
        console.print(f"{video.name}: [bold]{prediction.predicted}[/] (calibrated confidence {prediction.confidence:.1%}, "
                      f"temperature {prediction.temperature:.2f})")
        for label, p in prediction.probabilities.items():
            console.print(f"  P({label}) = {p:.3f}")
        if prediction.generalisation_s is not None:
            console.print(f"  estimated generalisation at {prediction.generalisation_s:.1f} s")
        console.print(f"timeline: {png}")

    emit(output_format, report, print_table)
