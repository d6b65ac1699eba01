"""Source 4: a MongoDB BSON dump of products with photos (Cdiscount format).

The file is a plain concatenation of BSON documents, each
`{_id: int, imgs: [{picture: <JPEG bytes>}, ...], category_id: int}`; a test
file has no `category_id`. The real train.bson is 58 GB, so nothing here ever
holds more than one document: we read the 4-byte little-endian length, then
exactly that many bytes, decode them with pymongo's `bson.decode`, and move on.

Items remember only where their photo's bytes lie in the file (a FileRange:
offset and length); `load()` seeks there and reads just them. That keeps the
index the writer builds small (two numbers per photo in its arrays) and lets
worker processes read photos in any order without sharing a file handle. A
photo whose bytes cannot be located in the raw document (an old binary
subtype) falls back to re-decoding its document (PictureLoader).
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

from utils.errors import SourceError, first_line
from utils.sources.base import FileRange, Item, Skip, Source
from utils.sources.folder import require_file
from utils.sources.table import read_csv_rows

# BSON caps documents at 16 MiB; anything far above that is a corrupt length
# field, and believing it would allocate gigabytes for one read.
MAX_DOC_BYTES = 64 * 1024 * 1024


class RawDoc(NamedTuple):
    """One document as it lies in the file."""

    offset: int          # byte offset of the document in the file
    length: int          # document length in bytes (the length prefix included)
    data: bytes          # the whole document


def iter_raw_documents(path: str) -> Iterator[RawDoc]:
    """Yield each document's bytes in file order, one at a time.

    Raises:
        SourceError: a file cut short inside a document (a partial copy or
            download), or a length field that cannot be right: after either we
            cannot find the next document boundary, so the run must stop.
    """
    require_file(path)
    with open(path, "rb") as f:
        offset = 0
        while True:
            head = f.read(4)
            if not head:
                return                                   # clean end of file
            if len(head) < 4:
                raise SourceError(f"{path}: BSON file truncated mid-document at byte {offset}")
            length = int.from_bytes(head, "little", signed=True)
            if length < 5 or length > MAX_DOC_BYTES:
                raise SourceError(f"{path}: corrupt BSON, document length {length} at byte {offset}")
            body = f.read(length - 4)
            if len(body) < length - 4:
                raise SourceError(f"{path}: BSON file truncated mid-document at byte {offset}")
            yield RawDoc(offset, length, head + body)
            offset += length


def _decode(data: bytes) -> dict | str:
    """The decoded document, or a skip reason when the bytes are not valid BSON."""
    import bson
    from bson.errors import BSONError

    try:
        return bson.decode(data)
    except (BSONError, ValueError, TypeError) as e:
        return f"invalid BSON document: {first_line(e)}"


def _picture(img) -> bytes | None:
    """The photo bytes of one `imgs` entry, or None when the entry is malformed."""
    if isinstance(img, dict):
        pic = img.get("picture")
        if isinstance(pic, bytes):          # bson.Binary subclasses bytes too
            return bytes(pic)
    return None


def read_picture(path: str, offset: int, length: int, index: int) -> list[bytes]:
    """Item.load: re-read one document by position and return [photo `index`].

    Raises:
        SourceError: the dump changed since it was indexed (cut short, not BSON, no such photo).
    """
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) < length:
        raise SourceError(f"{path}: BSON file truncated mid-document at byte {offset}")
    doc = _decode(data)
    if isinstance(doc, str):
        raise SourceError(f"{path}: {doc} at byte {offset}")
    imgs = doc.get("imgs")
    pic = _picture(imgs[index]) if isinstance(imgs, list) and index < len(imgs) else None
    if pic is None:
        raise SourceError(f"{path}: document at byte {offset} has no picture {index}")
    return [pic]


class _Document:
    """Where one product's document lies in the dump; shared by its photos' loaders."""

    __slots__ = ("path", "offset", "length")

    def __init__(self, path: str, offset: int, length: int) -> None:
        self.path, self.offset, self.length = path, offset, length

    def __getstate__(self):
        return self.path, self.offset, self.length

    def __setstate__(self, state) -> None:
        self.path, self.offset, self.length = state


class PictureLoader:
    """Item.load for photo `index` of a document: read_picture.

    Only for a photo whose bytes picture_offset cannot locate in the raw
    document (every other photo gets a FileRange, which the index keeps as two
    numbers); the index keeps this one as the object. Picklable, for the
    writer's resize workers.
    """

    __slots__ = ("doc", "index")

    def __init__(self, doc: _Document, index: int) -> None:
        self.doc, self.index = doc, index

    def __call__(self) -> list[bytes]:
        return read_picture(self.doc.path, self.doc.offset, self.doc.length, self.index)

    def __getstate__(self):
        return self.doc, self.index

    def __setstate__(self, state) -> None:
        self.doc, self.index = state


def picture_offset(data: bytes, pic: bytes, start: int) -> int:
    """Where `pic` lies in the raw document `data` as a BSON binary value, searching from `start`; -1 if not.

    A binary element is `\x05 name\0 <int32 length> <subtype> <bytes>`; the
    length check keeps a picture's bytes from matching anywhere else.
    """
    want = len(pic).to_bytes(4, "little")
    pos = data.find(pic, start)
    while pos >= 5:
        if data[pos - 5:pos - 1] == want:
            return pos
        pos = data.find(pic, pos + 1)
    return -1


def iter_products(path: str) -> Iterator[tuple[str, str | None, list[bytes]]]:
    """Each product of a dump with its photos, streaming (detect.py's one prediction per product).

    Malformed photo entries are left out, so the list may be empty (the caller
    reports such a product); documents that do not decode or have no `_id` are
    not products and are passed over.

    Yields:
        (product_id, category or None, [photo bytes, ...]).
    Raises:
        SourceError: the file is cut short or corrupt, as in BsonSource.
    """
    for raw in iter_raw_documents(path):
        doc = _decode(raw.data)
        if isinstance(doc, str) or "_id" not in doc:
            continue
        imgs = doc.get("imgs")
        pics = [p for p in (map(_picture, imgs) if isinstance(imgs, list) else []) if p is not None]
        cat = doc.get("category_id")
        yield str(doc["_id"]), (None if cat is None else str(cat)), pics


def read_categories(csv_path: str) -> tuple[list[str], dict[str, str]]:
    """Read category_names.csv: `category_id,category_level1,category_level2,category_level3`.

    Level names hold commas inside quotes ("CHAUSSURES - ACCESSOIRES",
    "BOUCHONS, PIPETTES"), so this is csv.reader's job (read_csv_rows), not str.split.

    Returns:
        (category ids in file order, {id: "l1 / l2 / l3"}).
    Raises:
        SourceError: a missing file, no category_id column, an empty or repeated id, no rows.
    """
    rows = read_csv_rows(csv_path)
    fields = rows[0][1] if rows else []
    if "category_id" not in fields:
        raise SourceError(f"{csv_path}: no category_id column (header: {','.join(fields) or 'empty'})")
    levels = [c for c in ("category_level1", "category_level2", "category_level3") if c in fields]
    ids: list[str] = []
    readable: dict[str, str] = {}
    for n, values in rows[1:]:
        row = dict(zip(fields, values))
        cid = row.get("category_id", "")
        if not cid:
            raise SourceError(f"{csv_path}: line {n}: empty category_id")
        if cid in readable:
            raise SourceError(f"{csv_path}: line {n}: duplicate category_id {cid}")
        ids.append(cid)
        readable[cid] = " / ".join(row.get(c, "") for c in levels)
    if not ids:
        raise SourceError(f"{csv_path}: no categories")
    return ids, readable


class BsonSource(Source):
    """One Item per photo of a Cdiscount-style BSON dump.

    key "<_id>/<photo index>", source_id "<_id>" (a product's photos share it,
    so the writer's val split never separates them), labels (str(category_id),),
    or () with split "test" when the document has no category_id.
    `categories` (category_names.csv) fixes the class list to every category in
    it, even when only a subset appears, and supplies readable names.
    """

    kind = "bson"

    def __init__(self, path: str, categories: str | None = None) -> None:
        super().__init__()
        require_file(path)
        self.path = path
        self.args = {"path": path, "categories": categories}
        self._known: set[str] | None = None
        self._label_cache: dict = {}
        if categories:
            ids, self.readable = read_categories(categories)
            self.classes = ids
            self._known = set(ids)

    def _labels(self, cat) -> tuple[str, ...]:
        """One shared tuple per category.

        The writer keeps every Item of a 58 GB dump (12M photos) in memory, so
        per-item copies of the label add up.
        """
        if cat is None:
            return ()
        labels = self._label_cache.get(cat)
        if labels is None:
            labels = self._label_cache[cat] = (str(cat),)
        return labels

    def items(self) -> Iterator[Item | Skip]:
        for raw in iter_raw_documents(self.path):
            yield from self._document_items(raw)

    def _document_items(self, raw: RawDoc) -> Iterator[Item | Skip]:
        doc = _decode(raw.data)
        if isinstance(doc, str):
            yield Skip(f"@{raw.offset}", doc)
            return
        if "_id" not in doc:
            yield Skip(f"@{raw.offset}", "document without _id")
            return
        pid = str(doc["_id"])
        imgs = doc.get("imgs")
        if not isinstance(imgs, list) or not imgs:
            yield Skip(pid, "product without imgs")
            return
        cat = doc.get("category_id")
        labels = self._labels(cat)
        unknown = labels and self._known is not None and labels[0] not in self._known
        where = _Document(self.path, raw.offset, raw.length)
        pos = 0
        for i, img in enumerate(imgs):
            key = f"{pid}/{i}"
            pic = _picture(img)
            if pic is None:
                yield Skip(key, "bad picture field (not binary)")
            elif unknown:
                yield Skip(key, f"label not in label list: {labels[0]}")
            else:
                at = picture_offset(raw.data, pic, pos)
                if at >= 0:
                    pos = at + len(pic)
                yield Item(
                    key=key,
                    source_id=pid,
                    labels=labels,
                    load=FileRange(self.path, raw.offset + at, len(pic)) if at >= 0 else PictureLoader(where, i),
                    size=len(pic),
                    split="test" if cat is None else None,
                )
