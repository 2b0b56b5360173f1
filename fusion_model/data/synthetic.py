"""Deterministic synthetic fashion catalog with rendered product photos.

Each product has visual attributes (category, colour, pattern) that its photo shows and
textual ones (brand, material) that only its text states. Seller titles are sparse and
noisy: they often omit colour and pattern and sometimes misstate them. Queries combine
attributes, so some need the photo, some need the text, and many need both.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from fusion_model import storage
from fusion_model.data.catalog import write_catalog
from fusion_model.data.judging import assign_splits, judgments_for, queries_frame
from fusion_model.progress import progress_bar

log = logging.getLogger(__name__)

IMAGE_SIZE = 224
BACKGROUND = (250, 250, 250)
OUTLINE = (60, 60, 60)

# Silhouettes as polygons in unit coordinates (x, y), y pointing down.
SILHOUETTES: dict[str, list[tuple[float, float]]] = {
    "t-shirt": [(.3, .15), (.4, .12), (.5, .18), (.6, .12), (.7, .15), (.9, .3), (.8, .42),
                (.72, .36), (.72, .88), (.28, .88), (.28, .36), (.2, .42), (.1, .3)],
    "shirt": [(.32, .12), (.42, .1), (.5, .2), (.58, .1), (.68, .12), (.85, .25), (.95, .8),
              (.85, .82), (.74, .4), (.72, .9), (.28, .9), (.26, .4), (.15, .82), (.05, .8),
              (.15, .25)],
    "hoodie": [(.38, .18), (.4, .05), (.6, .05), (.62, .18), (.85, .25), (.93, .85),
               (.83, .87), (.74, .45), (.74, .9), (.26, .9), (.26, .45), (.17, .87),
               (.07, .85), (.15, .25)],
    "dress": [(.4, .08), (.6, .08), (.62, .3), (.58, .42), (.8, .92), (.2, .92), (.42, .42),
              (.38, .3)],
    "skirt": [(.35, .3), (.65, .3), (.82, .8), (.18, .8)],
    "trousers": [(.3, .08), (.7, .08), (.72, .95), (.56, .95), (.5, .35), (.44, .95),
                 (.28, .95)],
    "shorts": [(.25, .3), (.75, .3), (.8, .7), (.55, .72), (.5, .5), (.45, .72), (.2, .7)],
    "sneakers": [(.1, .55), (.15, .4), (.4, .45), (.6, .55), (.9, .62), (.92, .75), (.1, .75)],
    "boots": [(.3, .1), (.55, .1), (.55, .6), (.85, .7), (.88, .88), (.3, .88)],
    "handbag": [(.2, .4), (.32, .4), (.35, .18), (.65, .18), (.68, .4), (.8, .4), (.85, .85),
                (.15, .85), (.2, .4), (.38, .4), (.4, .26), (.6, .26), (.62, .4)],
    "backpack": [(.28, .15), (.72, .15), (.78, .3), (.78, .9), (.22, .9), (.22, .3)],
    "cap": [(.25, .55), (.3, .35), (.5, .28), (.7, .35), (.75, .55), (.95, .62), (.95, .66),
            (.25, .62)],
}

CATEGORY_WORDS = {
    "t-shirt": ["t-shirt", "tee", "t-shirt"], "shirt": ["shirt", "button-down shirt"],
    "hoodie": ["hoodie", "hooded sweatshirt"], "dress": ["dress", "midi dress"],
    "skirt": ["skirt"], "trousers": ["trousers", "pants"], "shorts": ["shorts"],
    "sneakers": ["sneakers", "trainers"], "boots": ["boots", "ankle boots"],
    "handbag": ["handbag", "tote bag"], "backpack": ["backpack", "rucksack"],
    "cap": ["cap", "baseball cap"],
}

COLOURS = {
    "black": (25, 25, 25), "white": (245, 245, 245), "grey": (128, 128, 128),
    "red": (200, 30, 35), "blue": (40, 100, 210), "navy": (20, 30, 90),
    "green": (40, 150, 60), "yellow": (240, 205, 40), "pink": (240, 140, 180),
    "purple": (120, 50, 160), "brown": (120, 75, 40), "beige": (215, 195, 160),
    "orange": (240, 130, 30),
}
PATTERNS = ("solid", "striped", "checked", "dotted")
PATTERN_WEIGHTS = (0.45, 0.2, 0.18, 0.17)

MATERIALS = {
    "t-shirt": ["cotton", "polyester", "linen"], "shirt": ["cotton", "linen", "silk", "denim"],
    "hoodie": ["cotton", "fleece", "wool"], "dress": ["cotton", "silk", "linen", "polyester"],
    "skirt": ["denim", "cotton", "silk", "wool"], "trousers": ["denim", "cotton", "wool", "linen"],
    "shorts": ["denim", "cotton", "linen"], "sneakers": ["canvas", "leather", "suede"],
    "boots": ["leather", "suede"], "handbag": ["leather", "canvas", "suede"],
    "backpack": ["canvas", "polyester", "leather"], "cap": ["cotton", "wool", "polyester"],
}
BRANDS = ("Northwind", "Aurelia", "Kestrel", "Marlowe", "Tidewater", "Lumen", "Brightfield",
          "Oakridge", "Vantage", "Solace", "Harbor Lane", "Quill", "Redfern", "Alder", "Ember",
          "Juniper")
WOMEN_ONLY = {"dress", "skirt", "handbag"}
GENDERS = ("women", "men", "unisex")
GENDER_WORDS = {"women": "Women's", "men": "Men's", "unisex": "Unisex"}
GENDER_EQUIVALENTS = {"gender": {"women": {"unisex"}, "men": {"unisex"}}}

# Which attribute combinations queries name (category is always included).
QUERY_TEMPLATES = (
    ("colour",), ("colour", "pattern"), ("pattern",), ("colour", "gender"),
    ("brand",), ("material",), ("brand", "colour"), ("colour", "material"),
    ("pattern", "material"), ("colour", "pattern", "gender"), ("brand", "pattern"),
)
FIT_PHRASES = ("Regular fit.", "Relaxed fit for everyday wear.", "Slim cut.",
               "Designed for all-day comfort.", "A wardrobe essential.", "Easy care.", "")


@dataclass(frozen=True)
class TextNoise:
    """How seller text hides or garbles visual attributes."""

    colour_mentioned: float = 0.45
    colour_misstated: float = 0.12
    pattern_mentioned: float = 0.4
    pattern_misstated: float = 0.08
    brand_in_title: float = 0.9
    material_in_text: float = 0.9
    empty_description: float = 0.1
    missing_image: float = 0.02


def sample_products(n: int, rng: np.random.Generator, noise: TextNoise) -> pd.DataFrame:
    """Attributes and seller text for ``n`` products."""
    categories = list(SILHOUETTES)
    rows = []
    for i in range(n):
        category = categories[rng.integers(len(categories))]
        gender = "women" if category in WOMEN_ONLY else GENDERS[rng.integers(3)]
        attrs = {
            "category": category,
            "colour": list(COLOURS)[rng.integers(len(COLOURS))],
            "pattern": PATTERNS[rng.choice(len(PATTERNS), p=PATTERN_WEIGHTS)],
            "material": MATERIALS[category][rng.integers(len(MATERIALS[category]))],
            "brand": BRANDS[rng.integers(len(BRANDS))],
            "gender": gender,
        }
        title, description = seller_text(attrs, rng, noise)
        has_image = rng.random() >= noise.missing_image
        rows.append({"product_id": f"P{i:06d}", "title": title, "description": description,
                     "image": f"images/P{i:06d}.jpg" if has_image else None, **attrs})
    return pd.DataFrame(rows)


def seller_text(attrs: dict[str, str], rng: np.random.Generator,
                noise: TextNoise) -> tuple[str, str]:
    """A sparse, sometimes wrong, title and a short description."""
    colour = _maybe_misstate(attrs["colour"], list(COLOURS), noise.colour_mentioned,
                             noise.colour_misstated, rng)
    pattern = None
    if attrs["pattern"] != "solid":
        pattern = _maybe_misstate(attrs["pattern"], list(PATTERNS[1:]), noise.pattern_mentioned,
                                  noise.pattern_misstated, rng)
    material_in_title = rng.random() < 0.5
    has_material = rng.random() < noise.material_in_text
    words = [
        attrs["brand"] if rng.random() < noise.brand_in_title else None,
        GENDER_WORDS[attrs["gender"]] if rng.random() < 0.6 else None,
        colour.title() if colour else None,
        pattern.title() if pattern else None,
        attrs["material"].title() if has_material and material_in_title else None,
        _pick(CATEGORY_WORDS[attrs["category"]], rng).title(),
    ]
    title = " ".join(w for w in words if w)
    if rng.random() < noise.empty_description:
        return title, ""
    sentences = []
    if has_material and not material_in_title:
        sentences.append(f"Made from {attrs['material']}.")
    if rng.random() < 0.3:
        sentences.append(f"By {attrs['brand']}.")
    sentences.append(_pick(FIT_PHRASES, rng))
    return title, " ".join(s for s in sentences if s)


def _maybe_misstate(value: str, options: list[str], mentioned: float, misstated: float,
                    rng: np.random.Generator) -> str | None:
    draw = rng.random()
    if draw < misstated:
        return _pick([o for o in options if o != value], rng)
    if draw < misstated + mentioned:
        return value
    return None


def _pick(options, rng: np.random.Generator):
    return options[rng.integers(len(options))]


class PhotoRenderer:
    """Renders a category silhouette in a colour and pattern onto a white background."""

    def __init__(self, size: int = IMAGE_SIZE):
        self.size = size
        self.textures = {p: self._pattern_mask(p) for p in PATTERNS}

    def _pattern_mask(self, pattern: str) -> Image.Image:
        """L-mode mask, 255 where the main colour shows, twice the image size for jitter."""
        side = self.size * 2
        yy, xx = np.mgrid[0:side, 0:side]
        if pattern == "striped":
            main = (yy // 12) % 2 == 0
        elif pattern == "checked":
            main = ((yy // 16) + (xx // 16)) % 2 == 0
        elif pattern == "dotted":
            main = ((yy % 18 - 9) ** 2 + (xx % 18 - 9) ** 2) > 16
        else:
            main = np.ones((side, side), dtype=bool)
        return Image.fromarray((main * 255).astype(np.uint8), mode="L")

    def render(self, category: str, colour: str, pattern: str, seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        shade = rng.uniform(0.88, 1.08)
        rgb = tuple(int(min(255, c * shade)) for c in COLOURS[colour])
        contrast = (245, 245, 245) if sum(rgb) < 450 else (40, 40, 60)
        ox, oy = rng.integers(0, self.size, size=2)
        texture = self.textures[pattern].crop((ox, oy, ox + self.size, oy + self.size))
        fill = Image.composite(Image.new("RGB", (self.size,) * 2, rgb),
                               Image.new("RGB", (self.size,) * 2, contrast), texture)
        points = self._jittered(SILHOUETTES[category], rng)
        mask = Image.new("L", (self.size,) * 2, 0)
        ImageDraw.Draw(mask).polygon(points, fill=255)
        photo = Image.composite(fill, Image.new("RGB", (self.size,) * 2, BACKGROUND), mask)
        ImageDraw.Draw(photo).polygon(points, outline=OUTLINE, width=2)
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    def _jittered(self, polygon, rng: np.random.Generator) -> list[tuple[float, float]]:
        scale = rng.uniform(0.8, 1.0)
        angle = math.radians(rng.uniform(-6, 6))
        dx, dy = rng.uniform(-0.07, 0.07, size=2)
        cos, sin = math.cos(angle), math.sin(angle)
        points = []
        for x, y in polygon:
            x, y = (x - 0.5) * scale, (y - 0.5) * scale
            x, y = x * cos - y * sin, x * sin + y * cos
            points.append(((x + 0.5 + dx) * self.size, (y + 0.5 + dy) * self.size))
        return points


def sample_queries(products: pd.DataFrame, n: int, rng: np.random.Generator) -> list[dict]:
    """Up to ``n`` distinct queries, each built from one existing product's attributes."""
    queries: list[dict] = []
    seen: set[str] = set()
    for _ in range(n * 20):
        if len(queries) == n:
            break
        product = products.iloc[rng.integers(len(products))]
        template = QUERY_TEMPLATES[rng.integers(len(QUERY_TEMPLATES))]
        if "pattern" in template and product["pattern"] == "solid" and rng.random() < 0.7:
            continue
        if "gender" in template and product["gender"] == "unisex":
            continue
        attributes = {"category": product["category"], **{a: product[a] for a in template}}
        text = query_text(attributes, rng)
        if text not in seen:
            seen.add(text)
            queries.append({"text": text, "attributes": attributes})
    for i, (query, split) in enumerate(zip(queries, assign_splits([q["text"] for q in queries]))):
        query["query_id"], query["split"] = f"Q{i:05d}", split
    return queries


def query_text(attributes: dict[str, str], rng: np.random.Generator) -> str:
    """Shopper phrasing: '[brand] [colour] [pattern] [material] category [for gender]'."""
    words = [attributes.get("brand"), attributes.get("colour"), attributes.get("pattern"),
             attributes.get("material"), _pick(CATEGORY_WORDS[attributes["category"]], rng)]
    text = " ".join(w for w in words if w).lower()
    if "gender" in attributes:
        text += f" for {attributes['gender']}"
    return text


def generate_synthetic_catalog(out: str, n_products: int = 2000, n_queries: int | None = None,
                               seed: int = 0, noise: TextNoise | None = None,
                               fmt: str = "parquet", progress: bool = True,
                               judged_per_query: int | None = None,
                               image_size: int = IMAGE_SIZE) -> str:
    """Write a synthetic catalog (tables + JPEG photos of ``image_size`` pixels a side) to
    ``out``; same arguments, same bytes. ``judged_per_query`` caps each query's judgments
    at a seeded sample (see ``judgments_for``): a large catalog's judgments stay a pool."""
    if n_products < 10:
        raise ValueError(f"n_products must be at least 10, got {n_products}")
    noise = noise or TextNoise()
    n_queries = n_queries if n_queries is not None else max(30, n_products // 5)
    rng = np.random.default_rng(seed)
    products = sample_products(n_products, rng, noise)
    queries = sample_queries(products, n_queries, rng)
    attributes = products[["category", "colour", "pattern", "material", "brand", "gender"]]
    judgments = judgments_for(queries, attributes, products["product_id"], "category",
                              GENDER_EQUIVALENTS, per_query=judged_per_query, seed=seed)
    root = write_catalog(out, products, queries_frame(queries), judgments, fmt)
    _write_photos(root, products, seed, progress, image_size)
    manifest = {"generator": "fusion_model.data.synthetic", "seed": seed,
                "products": n_products, "queries": len(queries), "noise": noise.__dict__}
    if judged_per_query is not None or image_size != IMAGE_SIZE:
        manifest.update(judged_per_query=judged_per_query, image_size=image_size)
    storage.write_bytes(storage.join(root, "catalog.json"),
                        json.dumps(manifest, indent=2, sort_keys=True).encode())
    log.info("synthetic catalog: %d products, %d queries, %d judgments -> %s",
             n_products, len(queries), len(judgments), root)
    return root


def _write_photos(root: str, products: pd.DataFrame, seed: int, progress: bool,
                  image_size: int = IMAGE_SIZE) -> None:
    renderer = PhotoRenderer(image_size)
    with_image = products.dropna(subset=["image"])

    def write_one(row) -> None:
        photo_seed = seed * 1_000_003 + int(row.product_id[1:])
        data = renderer.render(row.category, row.colour, row.pattern, photo_seed)
        storage.write_bytes(storage.join(root, row.image), data)

    jobs = storage.parallel_map_iter(write_one, with_image.itertuples(index=False), 4)
    for _ in progress_bar(jobs, total=len(with_image), desc="render photos", unit="img",
                          show=progress):
        pass
