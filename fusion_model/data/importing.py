"""What the real-catalog importers share: safe photo paths, photo copies, sparse text,
colour names and the import manifest."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from fusion_model import storage
from fusion_model.data.catalog import climbs_out, write_catalog
from fusion_model.data.judging import assign_splits, queries_frame
from fusion_model.errors import CatalogError
from fusion_model.storage.core import parallel_map

log = logging.getLogger(__name__)

# Basic colour names a shopper types, with the spellings catalogs use for them. Longer
# names first, so that "off-white" is white and "black-brown" is brown, not black.
COLOUR_SYNONYMS = {
    "black-brown": "brown", "brown-black": "brown", "off-white": "white",
    "multicoloured": "multicolour", "multi-coloured": "multicolour", "multicolor": "multicolour",
    "multicolour": "multicolour", "assorted colours": "multicolour", "gray": "grey",
    "turquoise": "turquoise", "maroon": "red", "navy": "blue", "cream": "beige",
    "white": "white", "black": "black", "grey": "grey", "beige": "beige", "brown": "brown",
    "blue": "blue", "green": "green", "red": "red", "yellow": "yellow", "pink": "pink",
    "orange": "orange", "purple": "purple", "violet": "purple", "gold": "gold",
    "golden": "gold", "silver": "silver", "copper": "copper",
}
# Words that shade a colour ("light grey"), stripped only together with one.
SHADE_WORDS = ("light", "dark", "medium", "bright", "pale", "deep")


def basic_colour(text: object) -> str | None:
    """The first basic colour named in ``text`` ("Softwood,white" -> "white"), or None."""
    if not isinstance(text, str):
        return None
    lowered = text.lower()
    found = [(match.start(), name) for word, name in _synonyms_longest_first()
             for match in re.finditer(rf"(?<![\w-]){re.escape(word)}(?![\w-])", lowered)]
    return min(found)[1] if found else None


def _synonyms_longest_first() -> list[tuple[str, str]]:
    return sorted(COLOUR_SYNONYMS.items(), key=lambda item: len(item[0]), reverse=True)


def colour_words() -> tuple[str, ...]:
    """Every colour spelling, shaded ones included ("dark grey"), longest first (for
    ``strip_words``)."""
    colours = {*COLOUR_SYNONYMS, *COLOUR_SYNONYMS.values()}
    shaded = {f"{shade}{joint}{colour}" for shade in SHADE_WORDS for colour in colours
              for joint in (" ", "-")}
    return tuple(sorted(colours | shaded, key=len, reverse=True))


def strip_words(text: str, words: Sequence[str]) -> str:
    """Remove whole words/phrases (case-insensitive) and tidy the spaces left behind."""
    return re.sub(r"\s+", " ", _words_pattern(tuple(words)).sub(" ", text)).strip()


@functools.lru_cache(maxsize=8)
def _words_pattern(words: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b",
                      flags=re.IGNORECASE)


def strip_phrases(text: str, words: Sequence[str]) -> str:
    """``strip_words``, then the separators a removed word leaves ("Chair, , 90 cm" ->
    "Chair, 90 cm"; "Colour -" -> "Colour")."""
    stripped = re.sub(r"(?:^|\s)-(?=[\s.,;:]|$)", "", strip_words(text, words))
    stripped = re.sub(r"\s+([,.;:])", r"\1", stripped)
    stripped = re.sub(r"[,;](?:\s*[,;])+", ",", stripped)
    return re.sub(r"(?:\s*[-,;/]\s*)+$", "", re.sub(r"^[\s,;/-]+", "", stripped))


def check_image_paths(images: pd.Series, path: str) -> None:
    """Image references must be relative paths inside the source folder (no '..')."""
    def leaves(image) -> bool:
        path = str(image or "").replace("\\", "/")
        return PurePosixPath(path).is_absolute() or climbs_out(path) or "://" in path

    bad = images.map(leaves)
    if bad.any():
        rows = [int(i) + 1 for i in bad[bad].index]
        raise CatalogError(path, "image must be a relative path inside the source folder",
                           rows=rows, detail=f"found {images[bad].iloc[0]!r}")


def image_column(relative: pd.Series, source: str, copy_images: bool) -> list[str]:
    """Where the catalog finds each photo: in place under ``source``, or copied beside it."""
    source = os.path.abspath(source)
    return [img if copy_images else os.path.join(source, img) for img in relative]


def copy_images(source: str, root: str, relative: list[str]) -> None:
    """Copy photos into the catalog at the same relative paths."""
    def copy_one(path: str) -> None:
        storage.write_bytes(storage.join_within(root, path),
                            storage.read_bytes(storage.join_within(source, path)))

    parallel_map(copy_one, relative)


def write_manifest(root: str, importer: str, source: str, **facts) -> None:
    """``catalog.json``: which importer made this catalog, from where, with what options."""
    manifest = {"importer": importer, "source": os.path.abspath(source), **facts}
    storage.write_bytes(storage.join(root, "catalog.json"),
                        json.dumps(manifest, indent=2, sort_keys=True).encode())


def check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {value}")


def pick_queries(candidates: list[dict[str, str]], n: int, rng: np.random.Generator,
                 text_of: Callable[[dict[str, str]], str], salt: str) -> list[dict]:
    """A seeded sample of ``n`` attribute combinations as queries: one per distinct text,
    numbered ``Q00000``.., each with its train/val/test split (stable per text)."""
    candidates = sorted(candidates, key=lambda q: json.dumps(q, sort_keys=True))
    chosen = rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)
    queries = [{"attributes": candidates[i], "text": text_of(candidates[i])}
               for i in sorted(chosen)]
    queries = list({q["text"]: q for q in queries}.values())
    splits = assign_splits([q["text"] for q in queries], salt=salt)
    for i, (query, split) in enumerate(zip(queries, splits)):
        query["query_id"], query["split"] = f"Q{i:05d}", split
    return queries


def strip_chosen(products: pd.DataFrame, chosen: np.ndarray, columns: tuple[str, ...],
                 words: Sequence[str], strip: Callable[[str, Sequence[str]], str] = strip_phrases
                 ) -> None:
    """Strip ``words`` from ``columns`` of the ``chosen`` products (a boolean mask), in place."""
    for column in columns:
        products.loc[chosen, column] = products.loc[chosen, column].map(
            lambda text: strip(text, words))


def save_import(name: str, source: str, out: str, products: pd.DataFrame,
                queries: list[dict], judgments: pd.DataFrame, *, photos: list[str] | None,
                sparse: np.ndarray, sparse_titles: float, seed: int) -> str:
    """Write the catalog, copy ``photos`` (relative paths) into it unless None, write
    ``catalog.json``; returns the catalog's root."""
    root = write_catalog(out, products, queries_frame(queries), judgments)
    if photos is not None:
        copy_images(source, root, photos)
    write_manifest(root, f"fusion_model.data.{name}", source, sparse_titles=sparse_titles,
                   sparse_title_count=int(sparse.sum()), seed=seed,
                   products=len(products), queries=len(queries))
    log.info("%s catalog: %d products (%d with sparse text), %d queries, %d judgments -> %s",
             name, len(products), int(sparse.sum()), len(queries), len(judgments), root)
    return root


def attribute_queries(products: pd.DataFrame, templates: Sequence[tuple[str, ...]], n: int,
                      rng: np.random.Generator, text_of: Callable[[dict[str, str]], str],
                      salt: str, excluded: dict[str, set[str]] | None = None,
                      min_per_category: int = 3) -> list[dict]:
    """``pick_queries`` over the distinct attribute combinations (one per template) that
    some product has exactly, for categories with at least ``min_per_category`` products;
    ``excluded`` values never make a query ("multicolour", "unisex")."""
    counts = products["category"].value_counts()
    eligible = products[products["category"].map(counts) >= min_per_category]
    candidates = []
    for template in templates:
        combos = eligible[list(template)].dropna().drop_duplicates()
        for attribute, values in (excluded or {}).items():
            if attribute in template:
                combos = combos[~combos[attribute].isin(values)]
        candidates += [dict(zip(template, values)) for values in combos.itertuples(index=False)]
    return pick_queries(candidates, n, rng, text_of, salt)
