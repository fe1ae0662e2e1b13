"""The compatibility lane's refusal check (``compat/lane.sh <release> --refused``): in a venv holding an OpenCLIP
release this package does not support, with the package installed next to it (``pip install --no-deps``), stock
OpenCLIP works as without the package, one warning names the installed version and the supported range, and no
family model is registered."""
import importlib.metadata
import sys
import warnings

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import open_clip  # the package's start-up hook registers here, or refuses

    import open_clip_elip  # noqa: F401  (explicitly too: still one warning)

    model = open_clip.create_model("ViT-B-32")  # no pretrained weights
    import torch

    with torch.no_grad():
        features = model.encode_image(torch.zeros(1, 3, 224, 224))
version = importlib.metadata.version("open_clip_torch")
ours = [str(w.message) for w in caught if "open_clip_elip" in str(w.message)]
families = [name for name in open_clip.list_models() if name.endswith(("-elip", "-evit", "-tome"))]
checks = {
    f"stock create_model('ViT-B-32') works ({type(model).__name__}, features {tuple(features.shape)})":
        type(model).__name__ == "CLIP" and features.shape == (1, 512),
    "create_model is OpenCLIP's own": not hasattr(open_clip.create_model, "merges_elip_options"),
    f"exactly one warning from open_clip_elip ({len(ours)})": len(ours) == 1,
    f"it names the installed version {version} and the supported range":
        bool(ours) and f"OpenCLIP {version} is not supported" in ours[0] and "supported:" in ours[0],
    f"no family model registered ({families})": families == [],
}
print(f"refusal check: open_clip {version}; the warning: {ours[0] if ours else None}")
for message, passed in checks.items():
    print(f"{'ok  ' if passed else 'FAIL'} {message}")
sys.exit(0 if all(checks.values()) else 1)
