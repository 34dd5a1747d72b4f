"""Names every role agrees on (labels, streams, temporal models), importable without torch."""

TEMPORAL_BLSTM = "blstm"  # the GESTURES baseline
TEMPORAL_TCONV = "tconv"  # two dilated temporal convolutions, mean pooling
TEMPORAL_ATTN = "attn"  # per-snippet MLP with attention pooling
TEMPORAL_GRU = "gru"  # a small unidirectional GRU: the recurrent model sized for patient-level DP
TEMPORAL_LINEAR = "linear"  # no temporal model: a linear head on the mean-pooled window features (baseline)
TEMPORAL_MODELS = (TEMPORAL_BLSTM, TEMPORAL_TCONV, TEMPORAL_ATTN, TEMPORAL_GRU, TEMPORAL_LINEAR)

OPTIMIZER_ADAM, OPTIMIZER_SGD = "adam", "sgd"  # SGD with momentum 0.9
OPTIMIZERS = (OPTIMIZER_ADAM, OPTIMIZER_SGD)

DEFAULT_LABELS = ("FOS", "TCS")  # focal onset vs focal to bilateral tonic-clonic

# Model input streams: what a classifier reads from each snippet of a record.
STREAM_STCNN = "stcnn"  # the STCNN snippet feature
STREAM_KEYPOINTS = "keypoints"  # keypoint-motion summary of the snippet's landmarks
STREAM_STCNN_MOTION = "stcnn_motion"  # how much the STCNN feature changes over 2 s and 4 s (movement, not scene)
STREAM_REGIONS = "regions"  # per-body-region movement, left and right kept apart (common/records/region_motion.py)
# left-minus-right movement and posture differences (common/records/side.py); only the side output reads them
STREAM_SIDE = "side"
STREAMS = (STREAM_STCNN, STREAM_KEYPOINTS, STREAM_STCNN_MOTION, STREAM_REGIONS, STREAM_SIDE)
STCNN_STREAMS = (STREAM_STCNN, STREAM_STCNN_MOTION)  # the model streams that need `site prepare`'s STCNN features


def needs_stcnn(streams: tuple[str, ...] | list[str]) -> bool:
    """True when a model reading `streams` needs records with STCNN features."""
    return any(s in STCNN_STREAMS for s in streams)

# De-identification streams: what `site prepare` computes from the frames.
# The three MediaPipe landmarkers, then the STCNN (the same features as the
# model input stream STREAM_STCNN).
STREAM_POSE = "pose"
STREAM_HANDS = "hands"
STREAM_FACE = "face"
LANDMARK_STREAMS = (STREAM_POSE, STREAM_HANDS, STREAM_FACE)
DEID_STREAMS = (*LANDMARK_STREAMS, STREAM_STCNN)
# What `site prepare` computes unless asked: no face. Face landmarks are face geometry, a biometric identifier,
# and no model reads them; a site that wants them for its own use asks for `--streams ...,face`.
DEFAULT_DEID_STREAMS = (STREAM_POSE, STREAM_HANDS, STREAM_STCNN)

# How the STCNN saw the video (a record's `stcnn_input`): features made one way are never mixed with the other's.
STCNN_INPUT_PATIENT = "patient-window"  # a square around the patient's pose; each ~2 s window one clip (default)
STCNN_INPUT_FRAME = "frame-snippet"  # the frame's centre square; each 8-frame snippet its own clip (GESTURES)
STCNN_INPUTS = (STCNN_INPUT_PATIENT, STCNN_INPUT_FRAME)
