"""`wsgate export config --from URL`: what a live gateway serves, as a YAML config tree, like decK's dump.

The way to adopt an existing gateway into git, and to compare: the admin's ``/config`` documents (already
redacted by the gateway: a key or basic password written in its config is ``redacted:<fingerprint prefix>``,
an ``{env: VARIABLE}`` one stays the variable's name, a URL's userinfo is cut) are validated through the same
models and written back with only the fields that differ from their defaults. Secrets are never values here:
``{env: ...}`` references survive as references, and a credential written in the live config becomes a
placeholder that matches no client (the config rules warn, WSG252, and the credential index skips it) until
it is replaced by its ``{env: ...}`` or hash. ``plan`` compares such placeholders in their redacted form, so
an export plans as "no change" against the tree the gateway was started from.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from ruamel.yaml import YAML

from ..config.models import API_VERSION
from .live import MODELS

HEADER = ("# Exported by `wsgate export config --from {source}` (digest {digest}).\n"
          "# Credentials written in the live config are placeholders (redacted:...): replace each with its\n"
          "# `{{env: VARIABLE}}` or hash before serving this tree; `wsgate validate` lists them (WSG252).\n")


def export_documents(documents: Sequence[Mapping[str, Any]], source: str, digest: str) -> str:
    """The resources of ``documents`` (the admin's /config) as one YAML stream; raises ValueError on a bad one."""
    out = io.StringIO()
    out.write(HEADER.format(source=source, digest=digest))
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096
    for index, document in enumerate(documents):
        kind = document.get("kind")
        model_class = MODELS.get(kind) if isinstance(kind, str) else None
        if model_class is None:
            raise ValueError(f"resource {index} has an unknown kind {kind!r}")
        model = model_class.model_validate(dict(document))
        data: dict[str, Any] = {"apiVersion": API_VERSION}
        data.update(model.model_dump(mode="json", by_alias=True, exclude_defaults=True))
        out.write("---\n")
        yaml.dump(data, out)
    return out.getvalue()
