"""Class names, the MEGC2019 3-class mapping and the feature-encoding version.

The encoding version names the exact recipe that turns an onset/apex pair into a 3x28x28 input.
It is stored in every checkpoint and exported artifact; mex-live refuses an artifact whose version
differs from the one this code produces.
"""

CLASSES: tuple[str, ...] = ("negative", "positive", "surprise")
NUM_CLASSES = len(CLASSES)

# u, v, optical strain; TV-L1 onset->apex; per-channel min-max per image; 28x28; RGB order on disk.
ENCODING_VERSION = "tvl1-uvs-minmax-28-v1"
INPUT_SHAPE = (3, 28, 28)

DATASETS: tuple[str, ...] = ("casme2", "samm", "smic")

# MEGC2019 composite mapping of each database's own emotion labels to the 3 classes (paper §4.1):
# negative = {repression, anger, contempt, disgust, fear, sadness}, positive = {happiness},
# surprise = {surprise}. Labels outside these ("others", "tense" in SAMM/CASME II) are excluded.
EMOTION_TO_CLASS: dict[str, int] = {
    "negative": 0,
    "repression": 0,
    "anger": 0,
    "contempt": 0,
    "disgust": 0,
    "fear": 0,
    "sadness": 0,
    "positive": 1,
    "happiness": 1,
    "surprise": 2,
}


def class_of_emotion(emotion: str) -> int | None:
    """3-class index for a database emotion word, or None when MEGC2019 excludes it."""
    return EMOTION_TO_CLASS.get(emotion.strip().lower())
