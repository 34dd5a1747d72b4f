"""`semiofed predict`: de-identify a video in memory and classify it with a trained model."""

from __future__ import annotations

from dataclasses import replace
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
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the timeline PNG and the HTML page (default: the current directory)."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="Model files directory (MediaPipe, STCNN)."),
    onset_s: Optional[float] = typer.Option(None, "--onset-s", help="The seizure's clinical onset in the video, "
                                            "seconds (with --offset-s): the decision and the unusual-seizure check "
                                            "then read the seizure within these times, not the movement span."),
    offset_s: Optional[float] = typer.Option(None, "--offset-s", help="The seizure's clinical offset, seconds."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Classify a seizure video: calibrated probabilities with an interval, the seizure's evolution (onset, phases,
    generalisation), which body regions drove the decision, and whether the seizure is unusual; writes a timeline PNG
    and a self-contained HTML page."""
    from semiofed.client.training.predict import assess_record, write_timeline_png
    from semiofed.client.training.predict_page import decision_rests_on, side_text, unusual_text, write_assessment_page
    from semiofed.common.learning.checkpoint import load_checkpoint

    if (onset_s is None) != (offset_s is None):
        raise SemiofedError("only one of --onset-s and --offset-s was given", "give both seizure times, or neither")
    if onset_s is not None and not 0.0 <= onset_s < offset_s:
        raise SemiofedError(f"the seizure times {onset_s} s to {offset_s} s are not an interval of the video",
                            "give 0 <= --onset-s < --offset-s, in seconds from the video's start")
    checkpoint = load_checkpoint(model)  # verify the model before the slow de-identification
    from semiofed.client.deid.prepare import deidentify_video

    if not video.is_file():
        raise SemiofedError(f"video {video} does not exist", "give the path of a video file")
    extractor = checkpoint.meta.get("feature_extractor", {})
    # a model's records were made as it says; one from before the STCNN input was stored saw GESTURES' centre crop
    stcnn_input = extractor.get("input") or (STCNN_INPUT_FRAME if extractor.get("sha256") else STCNN_INPUT_PATIENT)
    from semiofed.common.constants import STREAM_POSE, STREAM_STCNN, needs_stcnn

    # only what the model reads: the pose for the motion descriptors, the STCNN when a stream needs it
    streams = (STREAM_POSE,) + ((STREAM_STCNN,) if needs_stcnn(checkpoint.config.streams) else ())
    record = deidentify_video(video, model_dir=model_dir, stcnn=extractor.get("name") or "i3d", stcnn_input=stcnn_input,
                              streams=streams)
    if onset_s is not None:
        if onset_s >= record.duration_s:
            raise SemiofedError(f"--onset-s {onset_s} s is not before the video's end ({record.duration_s:.1f} s)",
                                "give the seizure times in seconds from the video's start")
        record = replace(record, onset_s=onset_s, offset_s=min(offset_s, record.duration_s))
    assessment = assess_record(checkpoint, record)
    prediction = assessment.prediction
    folder = out or Path.cwd()
    png = write_timeline_png(prediction, folder / f"{video.stem}_timeline.png", title=video.name)
    html = write_assessment_page(assessment, folder / f"{video.stem}_assessment.html", title=video.name,
                                 model=f"{model} (weights {checkpoint.meta.get('weights_sha256', '')[:12]})")
    report = {"video": str(video), **assessment.to_json(), "timeline_png": str(png), "html": str(html)}

    def print_table() -> None:
        console = Console()
        lo, hi = assessment.explanation.interval
        unusual = assessment.unusual
        if assessment.decision == "review" and unusual.get("score") is None:
            console.print(f"{video.name}: [bold yellow]for review[/]: {unusual.get('note')}")
        elif assessment.decision == "review":
            console.print(f"{video.name}: [bold yellow]unusual seizure, for review[/] (score {unusual['score']:.2f} "
                          f"above {unusual['threshold']:.2f}); the model would say {prediction.predicted}")
        else:
            console.print(f"{video.name}: [bold]{prediction.predicted}[/] (calibrated confidence {prediction.confidence:.1%}, "
                          f"5-95% over segment draws {lo:.1%}-{hi:.1%}, temperature {prediction.temperature:.2f})")
        for label, p in prediction.probabilities.items():
            console.print(f"  P({label}) = {p:.3f}")
        evolution = assessment.evolution
        if evolution.onset_s is not None:
            console.print(f"  movement onset at {evolution.onset_s:.1f} s")
        if evolution.generalisation_s is not None:
            console.print(f"  estimated generalisation at {evolution.generalisation_s:.1f} s")
        explanation = assessment.explanation
        if explanation.side is not None:
            console.print(f"  side of the focal signs: {side_text(explanation.side)}")
        console.print(f"  what the {explanation.label} decision rests on most: {decision_rests_on(explanation)}")
        if unusual.get("score") is not None:
            console.print(f"  unusual-seizure score: {unusual_text(unusual)}")
        console.print(f"timeline: {png}\npage: {html}")

    emit(output_format, report, print_table)


def calibrate(
    model: Path = typer.Option(..., "--model", help="Checkpoint directory to calibrate (it is not changed)."),
    reference: Path = typer.Option(..., "--reference", help="Store of PUBLIC reference seizures (`site init --public-reference` + `site prepare`)."),
    out: Path = typer.Option(..., "--out", help="Directory for the calibrated checkpoint."),
    output_format: OutputFormat = format_option(),
) -> None:
    """Calibrate a model on public reference seizures: decision threshold and scale, and the unusual-seizure reference
    that `predict` flags against. Post-processing on public data: no privacy cost."""
    from semiofed.client.training.calibrate import calibrate_checkpoint, public_reference_records
    from semiofed.common.learning.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(model)
    if out.resolve() == checkpoint.path.resolve():
        raise SemiofedError(f"--out {out} is the model itself", "write the calibrated checkpoint to a new directory")
    records = public_reference_records(reference, checkpoint.config.labels)
    written = calibrate_checkpoint(checkpoint, records, out)
    calibrated = load_checkpoint(written)
    report = {"checkpoint": str(written), "reference_seizures": len(records),
              "calibration": calibrated.meta["calibration"], "unusual_threshold": calibrated.meta["unusual"]["threshold"]}
    emit(output_format, report, lambda: Console().print(
        f"calibrated on {len(records)} public reference seizures: {written} (unusual-seizure flag above "
        f"{report['unusual_threshold']:.2f})"))
