"""Query splits: a light module, so the CLI can offer them without importing pandas."""

SPLITS = ("train", "val", "test")
SCORED_SPLITS = ("val", "test")  # val chooses a recipe, test reports it
