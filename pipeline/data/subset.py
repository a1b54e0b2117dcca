"""Cut a COCO-format annotation file down to some of its categories.

    python -m pipeline.data.subset SRC.json OUT.json --categories car chair book [--keep-all-images]

The categories are named by ``name`` or by id and keep their ids, names and order of ``SRC``
(so COCO's non-contiguous ids survive: car 3, chair 62, book 84). Annotations of other
categories are dropped; by default so are the images left without any annotation (as
mmdetection's ``metainfo.classes`` selection does), ``--keep-all-images`` keeps every image
(pycocotools and the evaluator treat them as images with no object). Other top-level blocks
(``info``, ``licenses``) are copied. The images themselves are not copied: point
``data.files.<split>.img_dir`` at the original folder. ``OUT`` is written atomically.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.checkpoint import atomic_write_text
from pipeline.data.coco_source import load_json_file
from pipeline.errors import DataError


def select_categories(categories: list[dict[str, Any]], wanted: list[str], source: Path) -> list[dict[str, Any]]:
    """The records of ``categories`` named by ``wanted`` (each a name or an id written as text), in
    the order of ``categories``. :class:`DataError` naming ``source`` for a name or id it lacks, or
    a name that two categories share."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for c in categories:
        by_name.setdefault(str(c.get("name")), []).append(c)
    chosen: set[int] = set()
    for w in wanted:
        if w in by_name:
            if len(by_name[w]) > 1:
                raise DataError(f"{source}: category name {w!r} is shared by ids "
                                f"{[c.get('id') for c in by_name[w]]}; name the category by its id")
            chosen.add(id(by_name[w][0]))
            continue
        match = [c for c in categories if str(c.get("id")) == w]
        if not match:
            names = ", ".join(f"{c.get('id')}:{c.get('name')}" for c in categories[:100])
            raise DataError(f"{source}: no category named or numbered {w!r} (have: {names})")
        chosen.add(id(match[0]))
    return [c for c in categories if id(c) in chosen]


def subset_coco(data: dict[str, Any], wanted: list[str], source: Path, keep_all_images: bool = False) -> dict[str, Any]:
    """A copy of the COCO dict ``data`` holding only the categories ``wanted`` (names or ids) and
    their annotations; images without a kept annotation are dropped unless ``keep_all_images``."""
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list) \
            or not isinstance(data.get("images"), list):
        raise DataError(f"{source}: not a COCO annotation file (needs 'images' and 'categories' lists)")
    cats = select_categories(data["categories"], wanted, source)
    keep_ids = {c.get("id") for c in cats}
    anns = [a for a in data.get("annotations") or [] if isinstance(a, dict) and a.get("category_id") in keep_ids]
    if keep_all_images:
        images = list(data["images"])
    else:
        with_anns = {a.get("image_id") for a in anns}
        images = [i for i in data["images"] if isinstance(i, dict) and i.get("id") in with_anns]
    out = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    out.update(images=images, annotations=anns, categories=cats)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status (1 with a one-line message on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.data.subset", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="a COCO-format annotation file")
    parser.add_argument("out", type=Path, help="where to write the cut file")
    parser.add_argument("--categories", nargs="+", required=True, help="category names or ids to keep")
    parser.add_argument("--keep-all-images", action="store_true",
                        help="keep images without any annotation of the kept categories")
    args = parser.parse_args(argv)
    try:
        data = subset_coco(load_json_file(args.src), args.categories, args.src, args.keep_all_images)
    except DataError as e:
        print(f"subset: error: {e}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(data))
    names = ", ".join(f"{c['name']} (id {c['id']})" for c in data["categories"])
    print(f"{args.out}: {len(data['images'])} images, {len(data['annotations'])} annotations of {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
