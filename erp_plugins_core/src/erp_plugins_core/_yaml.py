"""The bounded, safe YAML loader manifests are read with: size, depth, duplicate keys and alias expansion checked
before anything is built; every problem is a ManifestError naming the source."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import ManifestError

if TYPE_CHECKING:
    import yaml

MAX_MANIFEST_BYTES = 1024 * 1024
#: Bound on YAML nodes after alias expansion: far above any real manifest, far below a billion laughs.
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 64


def _check_nodes(root: yaml.Node) -> None:
    """Raise ValueError if the node graph is recursive, too deep, has duplicate keys, or expands too far.

    Aliases share nodes, so the expanded size is counted with memoization per node: a billion-laughs
    document is measured in time proportional to its text, and rejected without building anything.
    """
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ValueError("recursive YAML alias")
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child, depth + 1)
        elif isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in seen:
                        raise ValueError(f"duplicate key {k.value!r} (line {k.start_mark.line + 1})")
                    seen.add(k.value)
                total += size(k, depth + 1) + size(v, depth + 1)
        if total > MAX_EXPANDED_NODES:
            raise ValueError(f"expands past {MAX_EXPANDED_NODES} nodes (YAML alias bomb?)")
        active.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


def load_yaml(data: bytes | str, source: str) -> Any:
    """Parse one YAML document safely, within the size and expansion bounds; ManifestError otherwise."""
    import yaml

    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source}: manifest is {len(raw)} bytes, larger than the 1 MiB allowed")
    try:
        text = raw.decode("utf-8")
        # libyaml's parser when PyYAML was built with it (several times faster), else the pure-Python one
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise ManifestError(
                    f"{source}: manifest is empty; it needs at least name, version, plugin_type, api_version"
                )
            _check_nodes(node)
            return loader.construct_document(node)
        finally:
            getattr(loader, "dispose", lambda: None)()
    except ManifestError:
        raise
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ManifestError(f"{source}: invalid YAML{where}: {' '.join(str(exc.problem or exc).split())}") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ManifestError(f"{source}: invalid YAML: {' '.join(str(exc).split()) or type(exc).__name__}") from None
