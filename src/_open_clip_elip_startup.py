"""Start-up hook of ``open_clip_elip`` (run by its ``.pth`` file; imports neither torch nor open_clip).

It waits for ``import open_clip`` and then imports ``open_clip_elip``, which registers the family models. A probe
such as ``importlib.util.find_spec("open_clip")`` before the import does not disarm it: the hook stays in place
until open_clip's module code has actually run. ``OPEN_CLIP_ELIP_DISABLE=1`` at start-up turns it off. A failure
prints one warning; it never breaks start-up or ``import open_clip``.
"""
import os
import sys
import warnings

DISABLE_ENV = "OPEN_CLIP_ELIP_DISABLE"


def _warn(exc: BaseException) -> None:
    message = (f"open_clip_elip: family models not registered with open_clip ({type(exc).__name__}: {exc}); "
               "`import open_clip_elip` shows the full error")
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    except Exception:  # warnings turned into errors (-W error): say it without raising
        print(f"RuntimeWarning: {message}", file=sys.stderr)


class OpenClipImportHook:  # a sys.meta_path finder (duck-typed: importlib.abc costs start-up time)
    """Finds nothing itself: wraps the loader of each ``open_clip`` spec the other finders return, so that
    whichever spec is executed registers the families right after open_clip's own code has run."""

    searching = False  # True while this hook asks the other finders (they may ask sys.meta_path again)

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "open_clip" or self.searching:
            return None
        try:
            self.searching = True
            spec = next(filter(None, (f.find_spec(fullname, path, target) for f in sys.meta_path
                                      if f is not self and hasattr(f, "find_spec"))), None)
        except Exception as exc:  # never break `import open_clip`: let the import system search as without us
            _warn(exc)
            return None
        finally:
            self.searching = False
        try:
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                exec_module = spec.loader.exec_module

                def exec_then_register(module):
                    exec_module(module)
                    self.done()
                    _register()

                spec.loader.exec_module = exec_then_register
        except Exception as exc:
            _warn(exc)
        return spec

    def done(self) -> None:
        """open_clip is imported: this hook has nothing more to do."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def _register() -> None:
    if "open_clip_elip" in sys.modules:  # being imported: its __init__ registers at its end
        return
    try:
        import open_clip_elip  # noqa: F401  (registers on import)
    except Exception as exc:
        sys.modules.pop("open_clip_elip", None)
        _warn(exc)


def install() -> None:
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return
    if "open_clip" not in sys.modules and not any(isinstance(f, OpenClipImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, OpenClipImportHook())


try:
    install()
except Exception as _exc:
    _warn(_exc)
