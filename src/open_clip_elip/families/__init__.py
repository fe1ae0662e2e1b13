"""The built-in token-reduction families, one module (or subpackage) each; importing one registers it
(``core.registration.register_family``). No family imports another."""
from . import elip, evit, mask, tome  # noqa: F401  (registers them)
