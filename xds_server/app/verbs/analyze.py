"""``meshpilot analyze``: check manifests offline, with the very messages ``serve`` gives.

The files are read by the same source and parser as ``serve`` and translated by the same
Translator, so what is reported here is what ``/debug/errors`` would show for them, translation
warnings included (a host that matches no service, an unreachable route, ...).
"""

from __future__ import annotations

import argparse
import gc
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from translators.errors import ConfigError
from translators.model import Resource, ResourceKey
from xds_server.app.pipeline import Pipeline
from xds_server.app.verbs.common import add_output, fail, print_json
from xds_server.sources.files import DirectorySource, LoadResult, _duplicate
from xds_server.sources.parse import parse_text

HELP = "validate manifests offline: the errors and warnings `serve` would report, grouped by file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("directory", nargs="?", type=Path, default=None,
                      help="a directory of manifests, read as `serve --config-dir` reads it")
    what.add_argument("-f", "--filename", dest="files", type=Path, nargs="+", action="extend", metavar="FILE",
                      help="manifest files instead of a directory (repeatable)")
    p.add_argument("--namespace", default="default", help="namespace of manifests that name none")
    add_output(p)


def run(args: argparse.Namespace) -> int:
    if args.directory is not None:
        if not args.directory.is_dir():
            return fail(f"not a directory: {args.directory}", 2)
        loaded = DirectorySource(args.directory, default_namespace=args.namespace).load()
    else:
        missing = [str(f) for f in args.files if not f.is_file()]
        if missing:
            return fail(f"no such file: {', '.join(missing)}", 2)
        loaded = load_files(args.files, args.namespace)
    problems = analyze(loaded)
    errors = sum(1 for e in problems if e.severity == "error")
    warnings = len(problems) - errors
    by_file: dict[str, list[ConfigError]] = defaultdict(list)
    for e in problems:
        by_file[e.file].append(e)
    if args.output == "json":
        print_json({
            "resources": len(loaded.resources),
            "errors": errors,
            "warnings": warnings,
            "files": {f: [e.as_dict() for e in es] for f, es in sorted(by_file.items())},
        })
    else:
        print(render(by_file, len(loaded.resources), errors, warnings))
    return 1 if errors else 0


def analyze(loaded: LoadResult) -> list[ConfigError]:
    """Every problem ``serve`` would report for ``loaded``: the source's, then translation's."""
    pipeline = Pipeline()
    pipeline.apply(loaded.resources, loaded.errors)
    gc.unfreeze()  # apply() freezes the heap for a long-running server; a one-shot check need not
    return list(pipeline.errors)


def load_files(files: list[Path], namespace: str) -> LoadResult:
    """Parse ``files`` as the directory source parses each file, each named as given."""
    resources: dict[ResourceKey, Resource] = {}
    origin: dict[ResourceKey, str] = {}
    errors: list[ConfigError] = []
    for path in files:
        name = str(path)
        parsed = parse_text(path.read_bytes(), name, namespace, is_json=name.lower().endswith(".json"))
        errors.extend(parsed.errors)
        for doc in parsed.documents:
            errors.extend(doc.errors)
            if doc.key is None or doc.resource is None:
                continue
            if doc.key in resources:
                errors.append(_duplicate(name, doc.key, origin[doc.key]))
                continue
            resources[doc.key] = doc.resource
            origin[doc.key] = name
    return LoadResult(resources, tuple(errors))


def render(by_file: Mapping[str, list[ConfigError]], resources: int, errors: int, warnings: int) -> str:
    lines: list[str] = []
    for file, problems in sorted(by_file.items()):
        lines.append(f"{file or '<config>'}:")
        for e in sorted(problems, key=lambda e: (e.severity != "error", e.resource, e.field)):
            where = " ".join(x for x in (e.resource, e.field) if x)
            lines.append(f"  {e.severity.capitalize():<8}{f'{where}: ' if where else ''}{e.message}")
    if not by_file:
        lines.append(f"No problems found in {resources} resources.")
    else:
        lines.append(f"{_n(errors, 'error')}, {_n(warnings, 'warning')} in {_n(len(by_file), 'file')} "
                     f"({resources} resources read)")
    return "\n".join(lines)


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"
