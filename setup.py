"""Puts two things where setuptools carries neither on its own: ``open_clip_elip.pth`` (the start-up hook that
registers the families with open_clip) in wheel and editable installs (an editable install writes only its own
path file), and the repository's ``patches/*.patch`` (our fixes to OpenCLIP's trainer and clip_benchmark) into the
wheel as ``open_clip_elip/_patches``, where ``python -m open_clip_elip.patches`` finds them (an editable install
reads ``patches/`` itself). ``MANIFEST.in`` puts both into the sdist."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

ROOT = Path(__file__).parent
PTH = ROOT / "src" / "open_clip_elip.pth"
PATCHES = sorted((ROOT / "patches").glob("*.patch"))
SHIPPED_PATCHES = Path("open_clip_elip", "_patches")  # in the wheel, beside the package's modules


class BuildPyWithPth(build_py):
    """Puts the .pth at the root of the wheel, i.e. in site-packages, and the patches into the package."""

    def run(self):
        super().run()
        if not self.editable_mode:
            if not PATCHES:
                raise FileNotFoundError(f"no patches in {ROOT / 'patches'}: this source tree is incomplete")
            shutil.copy(PTH, Path(self.build_lib, PTH.name))
            Path(self.build_lib, SHIPPED_PATCHES).mkdir(parents=True, exist_ok=True)
            for patch in PATCHES:
                shutil.copy(patch, Path(self.build_lib, SHIPPED_PATCHES, patch.name))

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return outputs + [str(Path(self.build_lib, PTH.name))] + [str(Path(self.build_lib, SHIPPED_PATCHES, p.name))
                                                                  for p in PATCHES]


class EditableWheelWithPth(editable_wheel):
    """Adds the .pth beside the editable path file (``_install_namespaces`` fills the wheel root)."""

    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        shutil.copy(PTH, Path(installation_dir, PTH.name))


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
