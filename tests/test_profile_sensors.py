"""Sensor readers against fake sysfs trees, a fake serial meter on a pty, and canned vcgencmd output.

The UM-meter frames are built field by field from the published protocol (header 0x0963 for a UM24C, 0x09C9 for a
UM25C, trailer 0x8068): we have no capture of a real meter's bytes, so the framing and scaling are what is tested.
"""

import os
import struct
import threading
import time

import pytest

from edgespike.profile import measure, sensors


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_hwmon_finds_ina_by_name_and_reads_power(tmp_path):
    write(tmp_path / "hwmon0/name", "coretemp\n")
    write(tmp_path / "hwmon0/temp1_input", "40000\n")
    write(tmp_path / "hwmon3/name", "ina226\n")
    write(tmp_path / "hwmon3/power1_input", "2500000\n")
    write(tmp_path / "hwmon3/update_interval", "35\n")
    write(tmp_path / "hwmon7/name", "ina219\n")
    write(tmp_path / "hwmon7/in1_input", "5000\n")  # mV
    write(tmp_path / "hwmon7/curr1_input", "400\n")  # mA
    found = sensors.find_hwmon(tmp_path)
    assert [s.path.name for s in found] == ["hwmon3", "hwmon7"]
    assert found[0].read_watts() == pytest.approx(2.5)
    assert found[0].period_s == pytest.approx(0.035)
    assert found[1].read_watts() == pytest.approx(2.0)
    (tmp_path / "hwmon3/power1_input").unlink()
    with pytest.raises(sensors.SensorError, match="hwmon3"):
        found[0].read_watts()


def test_rapl_counter_wraps(tmp_path):
    d = tmp_path / "intel-rapl:0"
    write(d / "name", "package-0\n")
    write(d / "max_energy_range_uj", "1000\n")
    write(d / "energy_uj", "900\n")
    (rapl,), why = sensors.find_rapl(tmp_path)
    assert why is None and rapl.kind == "energy"
    j = []
    for raw in (900, 990, 50, 400, 10):  # two wraps
        write(d / "energy_uj", f"{raw}\n")
        j.append(rapl.read_joules())
    assert j == pytest.approx([900e-6, 990e-6, 1051e-6, 1401e-6, 2012e-6])
    assert all(b > a for a, b in zip(j, j[1:], strict=False))


def test_rapl_root_only_is_reported(tmp_path, monkeypatch):
    d = tmp_path / "intel-rapl:0"
    write(d / "max_energy_range_uj", "1000\n")
    write(d / "energy_uj", "1\n")
    real = type(d).read_text

    def deny(self, *a, **k):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(type(d), "read_text", deny)
    found, why = sensors.find_rapl(tmp_path)
    assert found == [] and "root only" in why
    assert sensors.find_rapl(tmp_path / "none")[1].startswith("no RAPL")


def um_frame(volts_raw, amps_raw, watts_raw, header=0x0963):
    body = struct.pack(">HHHI", header, volts_raw, amps_raw, watts_raw)
    return body + bytes(130 - len(body) - 2) + struct.pack(">H", 0x8068)


def test_um_frame_scaling():
    assert sensors.parse_um_frame(um_frame(512, 1234, 6318)) == pytest.approx((5.12, 1.234, 6.318))
    v, a, w = sensors.parse_um_frame(um_frame(5123, 12345, 6324, 0x09C9), "UM25C")
    assert (v, a, w) == pytest.approx((5.123, 1.2345, 6.324))
    with pytest.raises(sensors.SensorError, match="129 bytes"):
        sensors.parse_um_frame(um_frame(1, 1, 1)[:-1])


class FakeMeter(threading.Thread):
    """A UM24C on the other end of a pty: answers 0xF0 with a frame in fragments, or stays silent."""

    def __init__(self, fd, frame, answers):
        super().__init__(daemon=True)
        self.fd, self.frame, self.answers = fd, frame, answers
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                b = os.read(self.fd, 1)
            except OSError:
                return
            if b == b"\xf0" and self.answers > 0:
                self.answers -= 1
                for i in range(0, 130, 50):  # fragments, as over Bluetooth RFCOMM
                    os.write(self.fd, self.frame[i:i + 50])
                    time.sleep(0.01)


@pytest.fixture
def pty_meter():
    pytest.importorskip("serial")
    import tty

    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    made = []

    def make(answers):
        m = FakeMeter(master, um_frame(512, 1000, 5120), answers)
        m.start()
        s = sensors.open_um(os.ttyname(slave), "UM24C", timeout_s=0.5)
        made.append((m, s))
        return s

    yield make
    for m, s in made:
        m.done.set()
        s.close()
    os.close(master)
    os.close(slave)


def test_um_meter_over_a_pty_then_silent(pty_meter):
    meter = pty_meter(answers=2)
    assert meter.read_watts() == pytest.approx(5.12)
    assert meter.read_watts() == pytest.approx(5.12)
    with pytest.raises(sensors.SensorError, match="no complete frame"):
        meter.read_watts()  # the meter stopped answering: an error, never a made-up value


def test_um_meter_on_pyserial_loop_echo_is_not_a_frame():
    # loop:// echoes our 0xF0 back and nothing else: an incomplete frame, reported as such
    meter = sensors.open_um("loop://", timeout_s=0.3)
    with pytest.raises(sensors.SensorError, match="1 of 130"):
        meter.read_watts()
    meter.close()


PMIC = """\
     3V7_WL_SW_A current(0)=0.00000000A
       3V3_SYS_A current(1)=0.05270000A
      1V8_SYS_A current(2)=0.17206000A
      VDD_CORE_A current(7)=2.00000000A
     3V7_WL_SW_V volt(8)=3.71534000V
       3V3_SYS_V volt(9)=3.31144000V
       1V8_SYS_V volt(10)=1.80000000V
      VDD_CORE_V volt(15)=0.85000000V
         EXT5V_V volt(24)=5.14320000V
"""


def test_pmic_parser():
    expect = 0.0527 * 3.31144 + 0.17206 * 1.8 + 2.0 * 0.85
    assert sensors.parse_pmic(PMIC) == pytest.approx(expect)
    with pytest.raises(sensors.SensorError):
        sensors.parse_pmic("error=1 error_msg=\"Command not registered\"")
    found, why = sensors.find_pmic(("false",))
    assert found == [] and "failed" in why


class FakeCounter(sensors.Sensor):
    """An energy counter: 2 W of idle power plus exactly 3 J per frame processed."""

    def __init__(self):
        super().__init__("fake counter", 0.001, "energy")
        self.t0, self.frames = time.perf_counter(), 0

    def read_joules(self):
        return 2.0 * (time.perf_counter() - self.t0) + 3.0 * self.frames


def test_energy_per_frame_subtracts_idle():
    s = FakeCounter()

    def fn(_):
        s.frames += 1
        time.sleep(0.005)

    m = measure.energy(fn, None, s, idle_s=0.1, min_s=0.1, trials=2)
    assert m.idle_w == pytest.approx(2.0, rel=0.05)
    assert m.net_j_per_frame == pytest.approx(3.0, rel=0.05)
    # gross adds the idle floor over each frame's wall time
    assert m.gross_j_per_frame == pytest.approx(3.0 + 2.0 * m.seconds_per_frame, rel=0.05)
    assert m.method == "energy counter" and m.samples == 0 and m.counter_reads == 2 * 2 * 2


class FakePower(sensors.Sensor):
    def __init__(self, fail_after=None):
        super().__init__("fake power", 0.002, "power")
        self.busy, self.n, self.fail_after = False, 0, fail_after

    def read_watts(self):
        self.n += 1
        if self.fail_after is not None and self.n > self.fail_after:
            raise sensors.SensorError("fake power: gone")
        return 5.0 if self.busy else 1.0


def test_power_sampling_and_a_sensor_that_dies():
    s = FakePower()

    def fn(_):
        s.busy = True
        time.sleep(0.003)

    m = measure.energy(fn, None, s, idle_s=0.05, min_s=0.05, trials=1, idle=lambda: time.sleep(0.01))
    assert m.trials[0].idle_w == pytest.approx(1.0) and m.samples >= 2
    assert m.net_j_per_frame > 0
    with pytest.raises(sensors.SensorError, match="gone"):
        measure.energy(fn, None, FakePower(fail_after=3), idle_s=0.05, min_s=0.05)


class FakeClock:
    """Seconds that advance only when the fake device works or idles: the figures are then exact."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_fake_rapl_tree_gives_gross_net_and_spread_over_trials(tmp_path):
    d = tmp_path / "intel-rapl:0"
    write(d / "name", "package-0\n")
    write(d / "max_energy_range_uj", "262143328850\n")
    write(d / "energy_uj", "1000\n")
    (rapl,), _ = sensors.find_rapl(tmp_path)
    clock, uj = FakeClock(), [1000]
    per_frame_j = iter([0.50] * 8 + [0.60] * 8 + [0.55] * 8)  # the device does the work at three levels

    def advance(seconds, joules):
        clock.t += seconds
        uj[0] += round(joules * 1e6)
        write(d / "energy_uj", f"{uj[0]}\n")

    def idle():  # 2 W at idle
        advance(0.0625, 2.0 * 0.0625)

    def frame(_):  # each frame 0.125 s (exact in binary), its energy including the idle floor
        advance(0.125, next(per_frame_j))

    m = measure.energy(frame, None, rapl, idle_s=0.5, min_s=1.0, trials=3, clock=clock, idle=idle)
    assert [t.frames for t in m.trials] == [8, 8, 8]
    assert [t.gross_j for t in m.trials] == pytest.approx([0.50, 0.60, 0.55])
    assert [t.net_j for t in m.trials] == pytest.approx([0.25, 0.35, 0.30])  # minus 2 W x 0.125 s
    assert m.gross_j_per_frame == pytest.approx(0.55) and m.net_j_per_frame == pytest.approx(0.30)
    assert m.gross_range_j == pytest.approx((0.50, 0.60)) and m.net_range_j == pytest.approx((0.25, 0.35))
    assert m.seconds_per_frame == pytest.approx(0.125) and m.idle_w == pytest.approx(2.0)
    # a counter is read, not sampled: two reads per phase, no "samples"
    assert m.samples == 0 and m.counter_reads == 3 * 2 * 2 and m.method == "energy counter"


def test_a_fake_hwmon_tree_reports_every_sample_it_took(tmp_path):
    write(tmp_path / "hwmon2/name", "ina226\n")
    write(tmp_path / "hwmon2/power1_input", "4000000\n")  # 4 W, idle and busy alike
    write(tmp_path / "hwmon2/update_interval", "2\n")
    (ina,) = sensors.find_hwmon(tmp_path)
    reads = []
    real = ina.read_watts

    def counted():
        reads.append(phase[0])
        return real()

    ina.read_watts = counted
    phase = ["idle"]

    def idle():
        phase[0] = "idle"
        time.sleep(0.005)

    def frame(_):
        phase[0] = "busy"
        time.sleep(0.004)

    m = measure.energy(frame, None, ina, idle_s=0.03, min_s=0.03, trials=2, idle=idle)
    assert len(m.trials) == 2 and m.method == "power samples" and m.counter_reads == 0
    # every reading taken is reported, idle and active, and nothing else
    assert sum(t.samples + t.idle_samples for t in m.trials) == len(reads)
    assert m.samples == sum(t.samples for t in m.trials) >= 2
    for t in m.trials:
        assert t.active_w == t.idle_w == 4.0
        assert t.gross_j == pytest.approx(4.0 * t.seconds / t.frames) and t.net_j == 0.0


def test_discover_says_where_it_looked(tmp_path, monkeypatch):
    write(tmp_path / "hwmon/hwmon0/name", "coretemp\n")
    monkeypatch.setattr(sensors, "HWMON_ROOT", str(tmp_path / "hwmon"))
    monkeypatch.setattr(sensors, "POWERCAP_ROOT", str(tmp_path / "powercap"))
    monkeypatch.setattr(sensors, "PMIC_COMMAND", ("false",))
    found, absent = sensors.discover()
    assert found == []
    text = "; ".join(absent)
    assert "no --um-port" in text and "coretemp" in text and str(tmp_path / "hwmon") in text
    assert "Pi 5 PMIC" in text and "RAPL" in text and str(tmp_path / "powercap") in text
    pmic, _ = sensors.find_pmic(("true",))
    assert pmic == [] or pmic[0].period_s >= 1.0  # never a process every 50 ms
