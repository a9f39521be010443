"""The bottom layer: the spec, inventory, placement, sizing and rendering."""

if __name__ != "tierline.cluster":  # the folder cluster/ installs as tierline.cluster only
    raise ImportError(
        f"import tierline.cluster, not {__name__} (`pip install -e .` maps cluster/ to it)"
    )
