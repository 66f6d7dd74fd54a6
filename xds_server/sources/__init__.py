"""Config sources: where the mesh's resources come from (a directory of manifests; later Kubernetes).

A source parses and validates, keeps the last good version of each resource, and
publishes complete states (``LoadResult``); it knows nothing about Envoy.
"""

from xds_server.sources.files import DirectorySource, LoadResult
from xds_server.sources.parse import ParsedDocument, ParsedFile, parse_object, parse_text

__all__ = ["DirectorySource", "LoadResult", "ParsedDocument", "ParsedFile", "parse_object", "parse_text"]
