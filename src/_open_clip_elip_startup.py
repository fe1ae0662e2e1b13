"""Start-up hook of ``open_clip_elip`` (run by its ``.pth`` file; imports neither torch nor open_clip).

It waits for the first ``import open_clip`` and then imports ``open_clip_elip``, which registers
the ELIP models. A failure prints one warning; it never breaks start-up or ``import open_clip``.
"""
import sys
import warnings


def _warn(exc: BaseException) -> None:
    warnings.warn(
        f"open_clip_elip: ELIP models not registered with open_clip ({type(exc).__name__}: {exc}); "
        "`import open_clip_elip` shows the full error", RuntimeWarning, stacklevel=2)


class OpenClipImportHook:  # a sys.meta_path finder (duck-typed: importlib.abc costs start-up time)
    """Finds nothing itself: wraps the loader of ``open_clip`` to register ELIP after it ran."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "open_clip":
            return None
        try:
            sys.meta_path.remove(self)
            spec = next(filter(None, (f.find_spec(fullname, path, target) for f in sys.meta_path
                                      if hasattr(f, "find_spec"))), None)
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return spec
            exec_module = spec.loader.exec_module

            def exec_then_register(module):
                exec_module(module)
                _register()

            spec.loader.exec_module = exec_then_register
            return spec
        except Exception as exc:  # never break `import open_clip`
            _warn(exc)
            return None


def _register() -> None:
    if "open_clip_elip" in sys.modules:  # being imported: its __init__ registers at its end
        return
    try:
        import open_clip_elip  # noqa: F401  (registers on import)
    except Exception as exc:
        sys.modules.pop("open_clip_elip", None)
        _warn(exc)


def install() -> None:
    if "open_clip" not in sys.modules and not any(isinstance(f, OpenClipImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, OpenClipImportHook())


try:
    install()
except Exception as _exc:
    _warn(_exc)
