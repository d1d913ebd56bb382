"""Which server holds which of the user's checkpoints.

A CHECKPOINT argument is looked up on every server (title, name, file name, or hash: see
:meth:`cfgsim.remote.host.RemoteHost.find`). Where several servers have it, it is taken for one
checkpoint when their hashes agree or cannot be compared (a server that has not hashed a file says
no hash; the images' own ``Model hash`` is then checked cell by cell); two servers whose hashes
differ hold different files under one name, and the user is asked for a hash instead of a guess.
"""

from __future__ import annotations

from collections.abc import Sequence

from cfgsim.errors import InputError
from cfgsim.host import Checkpoint
from cfgsim.remote.host import RemoteHost, ServerModel, describe_models


def _same(a: ServerModel, b: ServerModel) -> bool | None:
    """True/False when the hashes tell, None when they cannot."""
    if a.sha256 and b.sha256:
        return a.sha256.lower() == b.sha256.lower()
    if a.hash and b.hash:
        return a.hash.lower() == b.hash.lower()
    return None


def _where(host: RemoteHost) -> str:
    return host.url.split("://", 1)[-1]


def resolve(
    hosts: Sequence[RemoteHost], names: Sequence[str], labels: Sequence[str] | None = None
) -> tuple[list[Checkpoint], dict[str, dict[int, str]], list[str]]:
    """(checkpoints in the user's order, placements {checkpoint name: {server index: title}}, notes).

    Raises :class:`InputError` for a name no server has, a name that means two checkpoints on one
    server, and a name that means different files on different servers.
    """
    if labels is not None and len(labels) != len(names):
        raise InputError(f"--labels: {len(labels)} labels for {len(names)} checkpoints")
    checkpoints: list[Checkpoint] = []
    placements: dict[str, dict[int, str]] = {}
    notes: list[str] = []
    for n, text in enumerate(names):
        hits: dict[int, ServerModel] = {}
        for i, host in enumerate(hosts):
            found = host.find(text)
            if len(found) > 1:
                titles = ", ".join(m.title for m in found)
                raise InputError(f"checkpoint {text!r} means several checkpoints on {_where(host)}: {titles}")
            if found:
                hits[i] = found[0]
        if not hits:
            have = "; ".join(f"{_where(h)} has {describe_models(h.models)}" for h in hosts)
            raise InputError(f"checkpoint {text!r} is on none of the servers ({have})")
        first_index, first = next(iter(hits.items()))
        unverified = []
        for i, model in hits.items():
            same = _same(first, model)
            if same is False:
                raise InputError(
                    f"checkpoint {text!r} names different files: {first.title} on "
                    f"{_where(hosts[first_index])}, "
                    f"{model.title} on {_where(hosts[i])}; give a hash (sha256 prefix or the hash in the "
                    "title) to pick one"
                )
            if same is None and i != first_index:
                unverified.append(_where(hosts[i]))
        if unverified:
            notes.append(
                f"{text}: not hashed yet on every server — taken as the same file on "
                f"{_where(hosts[first_index])} and {', '.join(unverified)}; "
                "each image's Model hash is checked"
            )
        if first.title in placements:
            continue  # the same checkpoint given twice (by name and by hash) runs once
        known = next((m for m in hits.values() if m.sha256), first)
        label = labels[n] if labels is not None else first.model_name
        checkpoint = Checkpoint(
            name=first.title,
            label=label,
            model_hash=next((m.hash for m in hits.values() if m.hash), None),
            sha256=known.sha256,
            architecture="unknown",
        )
        checkpoints.append(checkpoint)
        placements[first.title] = {i: m.title for i, m in hits.items()}
    if labels is None:
        checkpoints = _unique_labels(checkpoints, placements, hosts)
    return checkpoints, placements, notes


def _unique_labels(
    checkpoints: list[Checkpoint], placements: dict[str, dict[int, str]], hosts: Sequence[RemoteHost]
) -> list[Checkpoint]:
    """Names shared by different checkpoints (one per server, picked by hash) get their hash added."""
    import dataclasses

    counts: dict[str, int] = {}
    for c in checkpoints:
        counts[c.label] = counts.get(c.label, 0) + 1
    out = []
    for c in checkpoints:
        tag = (c.model_hash or (c.sha256 or "")[:10]) or _where(hosts[next(iter(placements[c.name]))])
        out.append(dataclasses.replace(c, label=f"{c.label} [{tag}]") if counts[c.label] > 1 else c)
    return out
