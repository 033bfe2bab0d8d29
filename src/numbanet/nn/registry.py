"""Layers by name: the one registry ``from_config``, :func:`numbanet.load` and the CLI use.

The registry is fed by the ``numbanet_register_layers`` plugin hook; numbanet's own
layers register through it too (:mod:`numbanet._builtin.layers`), so a layer from a pip
package loads, saves and shows in ``numbanet plugins`` exactly like a built-in one.
"""

from __future__ import annotations

from typing import Any

from numbanet.nn.module import Module

__all__ = ["layer_from_config"]


def layer_from_config(config: dict[str, Any], qualified_id: str | None = None) -> Module:
    """Rebuild a layer from :meth:`Module.get_config` output.

    Args:
        config: the layer's config; its ``"type"`` is looked up in the registry.
        qualified_id: the registry's qualified id (``"numbanet-rmsnorm:RMSNorm"``), which
            model files store beside the config; when given it picks the class, so a
            plugin layer sharing a built-in's name is not mistaken for the built-in.

    Raises:
        ValueError: not a layer config, an unknown ``"type"`` (the message lists the
            known ones and says to install the plugin that provides it), or arguments
            the layer's constructor rejects.
    """
    from numbanet.plugins import list_layers, resolve_layer

    if not isinstance(config, dict) or not isinstance(config.get("type"), str):
        raise ValueError(f"layer config must be a dict with a 'type' key, got {config!r:.200}")
    kind = config["type"]
    try:
        _, cls = resolve_layer(qualified_id or kind)
    except ValueError as exc:
        if not qualified_id:
            raise ValueError(f"{exc}; if a plugin provides {kind!r}, install it") from None
        provider = qualified_id.split(":", 1)[0]
        raise ValueError(
            f"layer {kind!r} comes from the plugin {provider!r}, which is not installed "
            f"here: install it (layers available: {', '.join(list_layers())})") from None
    if cls.layer_type != kind:
        raise ValueError(f"layer type {kind!r} does not match the registered id "
                         f"{qualified_id!r}, a {cls.layer_type}")
    kwargs = {k: v for k, v in config.items() if k != "type"}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for layer {kind}: {exc}") from None
