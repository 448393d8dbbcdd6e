"""Power and energy sensors the profiler can read, found at run time, never guessed.

* Linux hwmon INA2xx (``/sys/class/hwmon/hwmon*/name``): ``power1_input`` in microwatts, else
  ``in1_input`` (mV) x ``curr1_input`` (mA); ``update_interval`` (ms) is the sample period when present.
* RDTech UM24C / UM25C / UM34C USB meters over a serial port (Bluetooth RFCOMM or USB): 9600 baud, send
  ``0xF0``, read a 130-byte big-endian frame (it may arrive in fragments): volts u16 at offset 2 (/100, UM25C
  /1000), amps u16 at 4 (/1000, UM25C /10000), watts u32 at 6 (/1000). Poll at most every 500 ms.
* x86 RAPL (``/sys/class/powercap/intel-rapl:0/energy_uj``): a cumulative counter that wraps at
  ``max_energy_range_uj``; usually readable by root only.
* Raspberry Pi 5 PMIC: ``vcgencmd pmic_read_adc`` lists rail currents and voltages; power = sum of V x A. Each
  reading starts one ``vcgencmd`` process on the device being measured, so it is read once a second (not every
  50 ms): that is its resolution, and the sampler's own cost is in the idle and the active power alike (it
  cancels in the net figure, not in the gross one).

A sensor is either a power sensor (``read_watts``) or an energy counter (``read_joules``, cumulative).
:func:`discover` returns the sensors present and, for the others, why not, so a report can say "estimated only"
with the reason.
"""

from __future__ import annotations

import re
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

INA_NAMES = ("ina209", "ina219", "ina220", "ina226", "ina230", "ina231", "ina233", "ina238", "ina260", "ina2xx")
UM_FRAME = 130


class SensorError(RuntimeError):
    """A sensor that cannot be read (gone, silent, permission denied); the message names it."""


@dataclass
class Sensor:
    """Base: ``name`` (what it is, where), ``period_s`` (its sample period), ``kind`` "power" or "energy"."""

    name: str
    period_s: float
    kind: str = "power"
    note: str = ""  # what limits this sensor's resolution, reported with every figure

    def read_watts(self) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def read_joules(self) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- hwmon INA2xx
@dataclass
class HwmonINA(Sensor):
    path: Path = field(default_factory=Path)

    def read_watts(self) -> float:
        try:
            p = self.path / "power1_input"
            if p.exists():
                return int(p.read_text().strip()) * 1e-6
            mv = int((self.path / "in1_input").read_text().strip())
            ma = int((self.path / "curr1_input").read_text().strip())
        except (OSError, ValueError) as exc:
            raise SensorError(f"{self.name}: cannot read {self.path}: {exc}") from exc
        return mv * ma * 1e-6


HWMON_ROOT = "/sys/class/hwmon"
POWERCAP_ROOT = "/sys/class/powercap"
PMIC_COMMAND = ("vcgencmd", "pmic_read_adc")
PMIC_PERIOD_S = 1.0


def find_hwmon(root: str | Path | None = None) -> list[HwmonINA]:
    """Every INA2xx hwmon device under ``root`` (numbers change across boots: match by ``name``)."""
    out = []
    for d in sorted(Path(root or HWMON_ROOT).glob("hwmon*")):
        try:
            name = (d / "name").read_text().strip()
        except OSError:
            continue
        if name.lower() not in INA_NAMES:
            continue
        if not ((d / "power1_input").exists() or ((d / "in1_input").exists() and (d / "curr1_input").exists())):
            continue
        period = 0.1
        try:
            period = int((d / "update_interval").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            pass
        out.append(HwmonINA(name=f"{name} hwmon ({d})", period_s=period, path=d))
    return out


# --------------------------------------------------------------------------- RAPL
@dataclass
class Rapl(Sensor):
    """A RAPL package-energy counter; :meth:`read_joules` is monotonic across wraps (call it at least once per
    wrap period: minutes at full load)."""

    path: Path = field(default_factory=Path)
    max_uj: int = 0
    _last: int | None = None
    _wraps: int = 0

    def read_joules(self) -> float:
        try:
            raw = int((self.path / "energy_uj").read_text().strip())
        except (OSError, ValueError) as exc:
            raise SensorError(f"{self.name}: cannot read {self.path / 'energy_uj'}: {exc}") from exc
        if self._last is not None and raw < self._last:
            self._wraps += 1
        self._last = raw
        # the counter runs 0..max_energy_range_uj inclusive, then restarts at 0
        return (raw + self._wraps * (self.max_uj + 1)) * 1e-6


def find_rapl(root: str | Path | None = None) -> tuple[list[Rapl], str | None]:
    """Package RAPL domains under ``root`` and, when none is usable, why (missing or root-only)."""
    root = root or POWERCAP_ROOT
    out, why = [], None
    for d in sorted(Path(root).glob("intel-rapl:[0-9]")):
        try:
            max_uj = int((d / "max_energy_range_uj").read_text().strip())
            int((d / "energy_uj").read_text().strip())
            name = (d / "name").read_text().strip() if (d / "name").exists() else d.name
        except PermissionError:
            why = f"RAPL at {d} is readable by root only (run as root or chmod energy_uj)"
            continue
        except (OSError, ValueError) as exc:
            why = f"RAPL at {d} unreadable: {exc}"
            continue
        out.append(Rapl(name=f"RAPL {name} ({d})", period_s=0.001, kind="energy", path=d, max_uj=max_uj))
    if not out and why is None:
        why = f"no RAPL domain under {root}"
    return out, why


# --------------------------------------------------------------------------- RDTech UM meters
def parse_um_frame(frame: bytes, model: str = "UM24C") -> tuple[float, float, float]:
    """``(volts, amps, watts)`` from one 130-byte UM-series frame."""
    if len(frame) != UM_FRAME:
        raise SensorError(f"UM meter frame is {len(frame)} bytes, expected {UM_FRAME}")
    v_raw, a_raw, w_raw = struct.unpack_from(">HHI", frame, 2)
    if model.upper() == "UM25C":
        return v_raw / 1000.0, a_raw / 10000.0, w_raw / 1000.0
    return v_raw / 100.0, a_raw / 1000.0, w_raw / 1000.0


@dataclass
class UMMeter(Sensor):
    """An RDTech UM24C/UM25C/UM34C on a serial port or pyserial URL (``/dev/rfcomm0``, ``loop://``)."""

    port: object = None  # an open pyserial object
    model: str = "UM24C"
    timeout_s: float = 2.0

    def read_watts(self) -> float:
        self.port.reset_input_buffer()
        self.port.write(b"\xf0")
        buf = b""
        deadline = time.monotonic() + self.timeout_s
        while len(buf) < UM_FRAME:  # the frame arrives in fragments, especially over Bluetooth
            if time.monotonic() > deadline:
                raise SensorError(f"{self.name}: no complete frame within {self.timeout_s} s "
                                  f"({len(buf)} of {UM_FRAME} bytes); is the meter on and paired?")
            chunk = self.port.read(UM_FRAME - len(buf))
            buf += chunk
        return parse_um_frame(buf, self.model)[2]

    def close(self) -> None:
        self.port.close()


def open_um(url: str, model: str = "UM24C", timeout_s: float = 2.0) -> UMMeter:
    """Open a UM meter at ``url`` (a device path or a pyserial URL)."""
    try:
        import serial
    except ModuleNotFoundError as exc:
        from edgespike.errors import need_extra

        raise need_extra("pyserial", "hw") from exc
    port = serial.serial_for_url(url, baudrate=9600, timeout=0.1)
    return UMMeter(name=f"RDTech {model} on {url}", period_s=0.5, port=port, model=model, timeout_s=timeout_s)


# --------------------------------------------------------------------------- Raspberry Pi 5 PMIC
_PMIC = re.compile(r"^\s*(\S+?)_([AV])\s+(?:current|volt)\(\d+\)=([0-9.eE+-]+)[AV]\s*$")


def parse_pmic(text: str) -> float:
    """Total power in watts from ``vcgencmd pmic_read_adc`` output: the sum over rails of volts x amps."""
    amps, volts = {}, {}
    for line in text.splitlines():
        m = _PMIC.match(line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
    rails = sorted(set(amps) & set(volts))
    if not rails:
        raise SensorError("vcgencmd pmic_read_adc printed no rail with both a current and a voltage")
    return sum(amps[r] * volts[r] for r in rails)


@dataclass
class PiPmic(Sensor):
    command: tuple[str, ...] = ("vcgencmd", "pmic_read_adc")

    def read_watts(self) -> float:
        try:
            text = subprocess.run(self.command, capture_output=True, text=True, timeout=2, check=True).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise SensorError(f"{self.name}: {' '.join(self.command)} failed: {exc}") from exc
        return parse_pmic(text)


def find_pmic(command: tuple[str, ...] | None = None) -> tuple[list[PiPmic], str | None]:
    command = tuple(command or PMIC_COMMAND)
    s = PiPmic(name=f"Raspberry Pi 5 PMIC ({' '.join(command)})", period_s=PMIC_PERIOD_S, command=command,
               note="one vcgencmd process per reading, so one reading a second")
    try:
        s.read_watts()
    except SensorError as exc:
        return [], str(exc)
    return [s], None


# --------------------------------------------------------------------------- discovery
def _hwmon_names(root) -> list[str]:
    names = []
    for d in sorted(Path(root).glob("hwmon*")):
        try:
            names.append((d / "name").read_text().strip())
        except OSError:
            continue
    return names


def discover(um_port: str | None = None, um_model: str = "UM24C") -> tuple[list[Sensor], list[str]]:
    """Sensors present on this machine (best first: board-level meters, then RAPL) and, for every sensor looked
    for and not usable, where it was looked for and why it does not apply."""
    found: list[Sensor] = []
    absent: list[str] = []
    if um_port:
        try:
            m = open_um(um_port, um_model)
            m.read_watts()
            found.append(m)
        except Exception as exc:  # noqa: BLE001 - any failure means: not usable, say why
            absent.append(f"UM meter at {um_port}: {exc}")
    else:
        absent.append("RDTech UM meter: no --um-port given")
    ina = find_hwmon()
    found += ina
    if not ina:
        names = _hwmon_names(HWMON_ROOT)
        absent.append(f"INA2xx hwmon: none under {HWMON_ROOT}"
                      + (f" (devices there: {', '.join(names)})" if names else " (no hwmon device)"))
    pmic, why = find_pmic()
    found += pmic
    if why:
        absent.append(f"Pi 5 PMIC: {why}")
    rapl, why = find_rapl()
    found += rapl
    if why:
        absent.append(f"RAPL: {why}")
    return found, absent
