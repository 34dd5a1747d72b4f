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
STREAMS = (STREAM_STCNN, STREAM_KEYPOINTS)

# De-identification streams: what `site prepare` computes from the frames.
# The three MediaPipe landmarkers, then the STCNN (the same features as the
# model input stream STREAM_STCNN).
STREAM_POSE = "pose"
STREAM_HANDS = "hands"
STREAM_FACE = "face"
LANDMARK_STREAMS = (STREAM_POSE, STREAM_HANDS, STREAM_FACE)
DEID_STREAMS = (*LANDMARK_STREAMS, STREAM_STCNN)
