"""utils/sources/base.read_file (the writer's sized file read) gives read_files' bytes whatever the index's size says."""
from __future__ import annotations

import functools

from utils.generate.columns import LoaderColumn
from utils.sources.base import FileRange, file_loader, read_file, read_files


def test_read_file_gives_the_files_bytes_for_any_indexed_size(tmp_path):
    p = tmp_path / "a.jpg"
    data = bytes(range(256)) * 40_000        # 10 MB: more than one 1 MiB read when the file grew
    p.write_bytes(data)
    for size in (len(data), len(data) - 1, 1, len(data) + 1, 5 * len(data)):   # exact, grew, shrank
        assert read_file(str(p), size) == read_files((str(p),)) == [data], size


def test_the_writers_reader_reads_what_the_loader_reads(tmp_path):
    (tmp_path / "d").mkdir()
    one, two = tmp_path / "d" / "s1_x.jpg", tmp_path / "d" / "y.png"
    one.write_bytes(b"abc")
    two.write_bytes(b"defg")
    blob = tmp_path / "dump.bson"
    blob.write_bytes(b"0123456789")
    col = LoaderColumn()
    col.append(file_loader(str(one)), 3, "s1")
    col.append(file_loader(str(one), str(two)), 7, "s2")
    col.append(FileRange(str(blob), 2, 4), 4, "s3")
    col.append(file_loader(str(two)), 0, "s4")            # size unknown: the loader itself
    col.finish()
    sizes, sids = [3, 7, 4, 0], ["s1", "s2", "s3", "s4"]
    readers = [col.reader(i, sizes[i], sids[i]) for i in range(4)]
    assert [r() for r in readers] == [col.get(i, sizes[i], sids[i])() for i in range(4)] == [
        [b"abc"], [b"abc", b"defg"], [b"2345"], [b"defg"]]
    assert isinstance(readers[0], functools.partial) and readers[0].func is read_file   # the fast one
    assert readers[0].args == (str(one), 3)
    assert readers[3].func is read_files
