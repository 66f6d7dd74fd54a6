"""DirectorySource: scanning, last good config, duplicates, identity of unchanged resources."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from source_manifests import docs, svc, vs

from translators.model import ResourceKey, VirtualService
from xds_server.sources.files import DirectorySource

REVIEWS = ResourceKey("VirtualService", "default", "reviews")
RATINGS = ResourceKey("VirtualService", "default", "ratings")
SVC = ResourceKey("Service", "default", "reviews")


def write(root: Path, rel: str, text: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def weights(resource: object) -> list[int | None]:
    assert isinstance(resource, VirtualService)
    return [d.weight for d in resource.spec.http[0].route]


def test_scans_recursively_in_sorted_order_and_skips_other_files(tmp_path: Path) -> None:
    write(tmp_path, "b/reviews.yml", svc("reviews"))
    write(tmp_path, "a.yaml", vs("reviews"))
    write(tmp_path, "c.json", '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c"}}')
    write(tmp_path, "README.md", "not config")
    write(tmp_path, ".hidden.yaml", svc("hidden"))
    write(tmp_path, "..2024_01_01/x.yaml", svc("configmap-internal"))
    result = DirectorySource(tmp_path).load()
    assert result.errors == ()
    assert set(result.resources) == {REVIEWS, SVC, ResourceKey("Service", "default", "c")}
    assert result.resources[SVC].source == "b/reviews.yml"
    assert result.changed_files == {"a.yaml", "b/reviews.yml", "c.json"}


def test_invalid_edit_keeps_last_good_while_sibling_updates(tmp_path: Path) -> None:
    f = write(tmp_path, "mesh.yaml", docs(vs("reviews"), vs("ratings", host="ratings")))
    source = DirectorySource(tmp_path)
    before = source.load().resources
    # Every weight 0: refused (weights are relative, but some destination must get traffic).
    f.write_text(docs(vs("reviews", weights=(0, 0)), vs("ratings", host="ratings", weights=(80, 20))))
    result = source.load()
    assert result.resources[REVIEWS] is before[REVIEWS]  # last good version still served
    assert weights(result.resources[RATINGS]) == [80, 20]
    (err,) = result.errors
    assert (err.file, err.resource, err.field) == (
        "mesh.yaml",
        "VirtualService default/reviews",
        "spec.http[0].route",
    )
    assert err.message.startswith("total destination weight is 0")
    # fixing it serves the new version and clears the error
    f.write_text(docs(vs("reviews", weights=(10, 90)), vs("ratings", host="ratings", weights=(80, 20))))
    result = source.load()
    assert weights(result.resources[REVIEWS]) == [10, 90] and result.errors == ()


def test_invalid_new_resource_is_not_served(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", vs("reviews", weights=(0, 0)))
    result = DirectorySource(tmp_path).load()
    assert result.resources == {} and len(result.errors) == 1


def test_yaml_broken_file_keeps_all_its_resources(tmp_path: Path) -> None:
    f = write(tmp_path, "mesh.yaml", docs(vs("reviews"), svc("reviews")))
    source = DirectorySource(tmp_path)
    before = source.load().resources
    f.write_text(docs(vs("reviews"), svc("reviews")) + "oops: a: b\n")
    result = source.load()
    assert dict(result.resources) == dict(before)
    assert all(result.resources[k] is before[k] for k in before)
    (err,) = result.errors
    assert err.file == "mesh.yaml" and err.message.startswith("YAML syntax error at line 23, column 8: ")


def test_garbage_file_keeps_resources_and_reports(tmp_path: Path) -> None:
    f = write(tmp_path, "mesh.yaml", vs("reviews"))
    source = DirectorySource(tmp_path)
    source.load()
    f.write_bytes(os.urandom(4096) + b"\x00")
    result = source.load()
    assert REVIEWS in result.resources
    assert [e.file for e in result.errors] == ["mesh.yaml"]


def test_oversized_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    write(tmp_path, "big.yaml", "# " + "x" * 5000)
    (err,) = DirectorySource(tmp_path, max_file_bytes=1000).load().errors
    assert err.file == "big.yaml" and "larger than 1000 bytes" in err.message


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.yaml")
    (err,) = DirectorySource(tmp_path).load().errors
    assert err.file == "pipe.yaml" and "not a regular file" in err.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_permission_denied_names_the_file(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", svc("reviews"))
    source = DirectorySource(tmp_path)
    source.load()
    f.chmod(0)
    result = source.load()
    assert SVC in result.resources
    assert [(e.file, e.message) for e in result.errors] == [("a.yaml", "cannot read: Permission denied")]


def test_deleting_a_file_or_a_document_removes_its_resources(tmp_path: Path) -> None:
    f = write(tmp_path, "mesh.yaml", docs(vs("reviews"), svc("reviews")))
    g = write(tmp_path, "sub/ratings.yaml", vs("ratings", host="ratings"))
    source = DirectorySource(tmp_path)
    assert set(source.load().resources) == {REVIEWS, SVC, RATINGS}
    f.write_text(svc("reviews"))
    assert set(source.load().resources) == {SVC, RATINGS}
    g.unlink()
    result = source.load()
    assert set(result.resources) == {SVC} and result.changed_files == {"sub/ratings.yaml"}


def test_directory_missing_keeps_serving(tmp_path: Path) -> None:
    root = tmp_path / "cfg"
    write(root, "a.yaml", svc("reviews"))
    source = DirectorySource(root)
    source.load()
    (root / "a.yaml").unlink()
    root.rmdir()
    result = source.load()
    assert SVC in result.resources
    assert result.errors[0].message == "config directory does not exist or is not a directory"


def test_duplicates_first_in_sorted_order_wins(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", vs("reviews", weights=(20, 80)))
    write(tmp_path, "a/z.yaml", vs("reviews", weights=(30, 70)))
    write(tmp_path, "c.yaml", docs(svc("reviews"), svc("reviews", port=1)))
    result = DirectorySource(tmp_path).load()
    assert weights(result.resources[REVIEWS]) == [30, 70]
    assert [str(e) for e in result.errors] == [
        "b.yaml: VirtualService default/reviews: metadata.name: "
        "VirtualService default/reviews is already defined in a/z.yaml; the first definition is used",
        "c.yaml: Service default/reviews: metadata.name: "
        "Service default/reviews is already defined earlier in this file; the first definition is used",
    ]


def test_unknown_fields_and_kinds_are_warnings(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        docs(vs("reviews").replace("spec:\n", "spec:\n  futureField: []\n"), "kind: WasmPlugin\nmetadata: {name: g}\n"),
    )
    result = DirectorySource(tmp_path).load()
    assert REVIEWS in result.resources
    assert [(e.severity, e.resource, e.field) for e in result.errors] == [
        ("warning", "VirtualService default/reviews", "spec.futureField"),
        ("warning", "WasmPlugin default/g", "kind"),
    ]


def test_identity_preserved_for_unchanged_files_and_equal_documents(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", svc("reviews"))
    f = write(tmp_path, "b.yaml", docs(vs("reviews"), vs("ratings", host="ratings")))
    source = DirectorySource(tmp_path)
    before = source.load().resources
    f.write_text(docs(vs("reviews"), vs("ratings", host="ratings", weights=(90, 10))))
    after = source.load()
    assert after.changed_files == {"b.yaml"}
    assert after.resources[SVC] is before[SVC]  # unchanged file: not even re-parsed
    assert after.resources[REVIEWS] is before[REVIEWS]  # changed file, equal document: reused
    assert after.resources[RATINGS] is not before[RATINGS]


def test_touch_only_change_is_not_reparsed(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", svc("reviews"))
    source = DirectorySource(tmp_path)
    source.load()
    os.utime(f, (1, 1))
    result = source.reload({f})
    assert result.changed_files == frozenset()


def test_reload_reads_only_the_given_paths(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", svc("reviews"))
    source = DirectorySource(tmp_path)
    source.load()
    b = write(tmp_path, "b.yaml", vs("reviews"))
    a.write_text(svc("reviews", port=1))
    result = source.reload({b})
    assert result.changed_files == {"b.yaml"} and set(result.resources) == {SVC, REVIEWS}
    a.unlink()
    result = source.reload({a, tmp_path / ".a.yaml.swp"})
    assert set(result.resources) == {REVIEWS}
    # a removed directory (not a manifest path) triggers a full scan
    write(tmp_path, "d/x.yaml", vs("ratings", host="ratings"))
    assert RATINGS in source.reload({tmp_path / "d"}).resources


def test_changes_since_names_every_key_that_moved_and_matches_a_full_merge(tmp_path: Path) -> None:
    """Each result says which keys may differ from an earlier one (what World.evolve diffs),
    and the merge patched per edit equals a fresh load's, through edits, additions,
    removals and duplicates."""
    from translators.model.world import World

    a = write(tmp_path, "a.yaml", docs(svc("reviews"), vs("reviews")))
    b = write(tmp_path, "b.yaml", svc("ratings"))
    src = DirectorySource(tmp_path)
    first = src.load()
    world = World().evolve(first.resources)
    steps = [
        (a, docs(svc("reviews"), vs("reviews", weights=(80, 20)))),  # edited in place: the patch path
        (b, docs(svc("ratings"), vs("ratings"))),  # a key added
        (a, svc("reviews")),  # a key removed
        (b, docs(svc("ratings"), svc("reviews"))),  # a duplicate: a.yaml's stays first
        (a, vs("reviews")),  # the duplicate's first file drops it: b.yaml's is served now
        (b, svc("ratings")),
    ]
    previous = first
    for path, text in steps:
        path.write_text(text)
        result = src.reload([path])
        since = result.changes_since(previous)
        assert since is not None
        evolved = world.evolve(result.resources, since)
        assert evolved.changed == World(world.version, world.resources).evolve(result.resources).changed
        fresh = DirectorySource(tmp_path).load()
        assert dict(result.resources) == dict(fresh.resources)
        assert list(result.resources) == list(fresh.resources)
        assert result.errors == fresh.errors
        world, previous = evolved, result
    # Across results skipped between (a debounced burst): the union; another source's: unknown.
    a.write_text(svc("reviews"))
    mid = src.reload([a])
    b.write_text(docs(svc("ratings"), vs("ratings")))
    last = src.reload([b])
    whole, first_half, second_half = last.changes_since(previous), mid.changes_since(previous), last.changes_since(mid)
    assert whole is not None and first_half is not None and second_half is not None
    assert whole == first_half | second_half and SVC in whole and RATINGS in whole
    assert last.changes_since(DirectorySource(tmp_path).load()) is None
