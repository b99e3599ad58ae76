"""The bounded log file for twistd's --logger (p2psip.util.log_files)."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.log_files import (
    DEFAULT_KEEP,
    DEFAULT_MAX_BYTES,
    LogSettingsError,
    bounded_log_file,
    settings_from,
)


class BoundedLogFileTests(SynchronousTestCase):
    def test_rotation_keeps_a_bounded_number_of_files(self) -> None:
        """However much is written, at most keep old files of about max_bytes remain."""
        directory = Path(self.mktemp())
        directory.mkdir()
        log_file = bounded_log_file(directory / "role.log", 4096, 2)
        line = "x" * 99 + "\n"
        for _ in range(1000):
            log_file.write(line)
        log_file.close()
        names = sorted(path.name for path in directory.iterdir())
        self.assertEqual(names, ["role.log", "role.log.1", "role.log.2"])
        for path in directory.iterdir():
            self.assertLessEqual(path.stat().st_size, 4096 + len(line))

    def test_settings(self) -> None:
        """Defaults without variables; a bad value is an error naming its variable."""
        path, max_bytes, keep = settings_from({})
        self.assertEqual(
            (path.name, max_bytes, keep), ("twistd.log", DEFAULT_MAX_BYTES, DEFAULT_KEEP)
        )
        path, max_bytes, keep = settings_from(
            {
                "P2PSIP_LOG_FILE": "x/role.log",
                "P2PSIP_LOG_MAX_BYTES": "65536",
                "P2PSIP_LOG_KEEP": "3",
            }
        )
        self.assertEqual(
            (path.name, path.is_absolute(), max_bytes, keep), ("role.log", True, 65536, 3)
        )
        for name, value in (
            ("P2PSIP_LOG_MAX_BYTES", "ten"),
            ("P2PSIP_LOG_MAX_BYTES", "10"),
            ("P2PSIP_LOG_KEEP", "0"),
        ):
            error = self.assertRaises(LogSettingsError, settings_from, {name: value})
            self.assertIn(name, str(error))
