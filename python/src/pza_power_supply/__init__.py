"""Control bench power supplies served by a pza-power-supply server, over MQTT, from Python.

>>> from pza_power_supply import Client, Rejected, Timeout
>>> with Client("127.0.0.1", 1883) as client:                 # doctest: +SKIP
...     psu = client.power_supply("emulator")
...     psu.set_voltage(5.0)
5.0

``Client`` holds the one MQTT connection; ``Client.power_supply(name)`` gives a ``PowerSupply``
handle whose commands return the values read back by the server. ``Rejected`` (the server's
refusal, e.g. a value over a security limit) and ``Timeout`` (no answer) derive from ``PzaError``.
Installing the package also installs a pytest plugin with a ``pza_client`` fixture
(``--pza-broker HOST:PORT``, ``--pza-namespace NS``).
"""

from ._client import Client
from ._errors import PzaError, Rejected, Timeout
from ._power_supply import PowerSupply

__all__ = ["Client", "PowerSupply", "PzaError", "Rejected", "Timeout"]
__version__ = "0.1.0"
