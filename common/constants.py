"""Names every role agrees on (labels, streams, temporal models), importable without torch."""

TEMPORAL_BLSTM = "blstm"  # the GESTURES baseline
TEMPORAL_TCONV = "tconv"  # two dilated temporal convolutions, mean pooling
TEMPORAL_ATTN = "attn"  # per-snippet MLP with attention pooling
TEMPORAL_MODELS = (TEMPORAL_BLSTM, TEMPORAL_TCONV, TEMPORAL_ATTN)

DEFAULT_LABELS = ("FOS", "TCS")  # focal onset vs focal to bilateral tonic-clonic

STREAM_STCNN = "stcnn"
STREAM_KEYPOINTS = "keypoints"
STREAMS = (STREAM_STCNN, STREAM_KEYPOINTS)
