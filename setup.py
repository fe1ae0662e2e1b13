"""Installs ``open_clip_elip.pth`` (the start-up hook that registers ELIP with open_clip) in both
wheel and editable installs: setuptools carries neither on its own (an editable install writes
only its own path file)."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = Path(__file__).parent / "src" / "open_clip_elip.pth"


class BuildPyWithPth(build_py):
    """Puts the .pth at the root of the wheel, i.e. in site-packages."""

    def run(self):
        super().run()
        if not self.editable_mode:
            shutil.copy(PTH, Path(self.build_lib, PTH.name))

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else outputs + [str(Path(self.build_lib, PTH.name))]


class EditableWheelWithPth(editable_wheel):
    """Adds the .pth beside the editable path file (``_install_namespaces`` fills the wheel root)."""

    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        shutil.copy(PTH, Path(installation_dir, PTH.name))


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
