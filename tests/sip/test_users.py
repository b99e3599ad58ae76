"""Tests for the users file and the ``p2psip users`` commands."""

from __future__ import annotations

import io
import stat
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.cli import main
from p2psip.sip.digest import compute_ha1
from p2psip.sip.users import UsersFile, UsersFileError, canonical_aor, split_aor

MD5_HA1 = compute_ha1("MD5", "alice", "example.org", "wonderland")
SHA_HA1 = compute_ha1("SHA-256", "alice", "example.org", "wonderland")


class UsersFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.path = self.directory / "users"

    def test_add_then_lookup(self) -> None:
        """A saved user reloads with the HA1 of its password for both algorithms."""
        users = UsersFile.load(self.path, missing_ok=True)
        users.set_password("sip:alice@Example.ORG", "wonderland")
        users.save()
        loaded = UsersFile.load(self.path)
        self.assertEqual(loaded.ha1("alice", "example.org", "MD5"), MD5_HA1)
        self.assertEqual(loaded.ha1("alice", "example.org", "SHA-256"), SHA_HA1)
        self.assertEqual(loaded.aor_for("alice", "example.org"), "sip:alice@example.org")
        self.assertIsNone(loaded.ha1("bob", "example.org", "MD5"))

    def test_file_mode_and_no_password(self) -> None:
        """The file is written with mode 0600 and never contains the password."""
        users = UsersFile.load(self.path, missing_ok=True)
        users.set_password("sip:alice@example.org", "wonderland")
        users.save()
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.assertNotIn("wonderland", self.path.read_text())
        self.assertEqual(list(self.directory.iterdir()), [self.path])

    def test_rewrite_keeps_group_read_only(self) -> None:
        """Rewriting keeps a 0640 file's group read bit but drops anything wider."""
        users = UsersFile.load(self.path, missing_ok=True)
        users.set_password("sip:alice@example.org", "wonderland")
        users.save()
        self.path.chmod(0o644)
        users.save()
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o640)
        self.path.chmod(0o604)
        users.save()
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_change_and_remove_keep_comments(self) -> None:
        """Changing and removing users keeps comment lines and the other users."""
        self.path.write_text(
            "# staff\n"
            f"sip:alice@example.org example.org MD5={MD5_HA1}\n"
            "\n"
            f"sip:bob@example.org example.org MD5={MD5_HA1.replace('a', 'b')}\n"
        )
        users = UsersFile.load(self.path)
        users.set_password("sip:alice@example.org", "new", realm="other")
        self.assertTrue(users.remove("sip:bob@EXAMPLE.org"))
        self.assertFalse(users.remove("sip:carol@example.org"))
        users.save()
        lines = self.path.read_text().splitlines()
        self.assertEqual(lines[0], "# staff")
        self.assertEqual(len(lines), 3)
        self.assertTrue(lines[1].startswith("sip:alice@example.org other SHA-256="))
        reloaded = UsersFile.load(self.path)
        self.assertEqual(
            reloaded.ha1("alice", "other", "MD5"), compute_ha1("MD5", "alice", "other", "new")
        )
        self.assertIsNone(reloaded.ha1("alice", "example.org", "MD5"))

    def test_errors_name_file_and_line(self) -> None:
        """Each kind of broken line is an error naming the file and the line number."""
        for broken in [
            "sip:alice@example.org example.org",
            f"alice example.org MD5={MD5_HA1}",
            f"sip:alice@example.org example.org SHA1={MD5_HA1}",
            "sip:alice@example.org example.org MD5=xyz",
            f"sip:alice@example.org example.org MD5={MD5_HA1} MD5={MD5_HA1}",
            f'sip:alice@example.org ex"ample MD5={MD5_HA1}',
            f"sip:alice@example.org example.org MD5={MD5_HA1}\nsip:alice@example.org x MD5={MD5_HA1}",
            f"sip:alice@example.org r MD5={MD5_HA1}\nsips:alice@example.org r MD5={MD5_HA1}",
        ]:
            self.path.write_text("# header\n" + broken + "\n")
            error = self.assertRaises(UsersFileError, UsersFile.load, self.path)
            self.assertIn(f"{self.path}:", str(error))
            self.assertRegex(str(error), r":[23]: ")

    def test_refresh_sees_new_users(self) -> None:
        """A running reader picks up users added since, and keeps them if the file then breaks."""
        writer = UsersFile.load(self.path, missing_ok=True)
        writer.set_password("sip:alice@example.org", "wonderland")
        writer.save()
        reader = UsersFile.load(self.path)
        self.assertFalse(reader.refresh())
        writer.set_password("sip:bob@example.org", "builder")
        writer.save()
        self.assertTrue(reader.refresh())
        self.assertIsNotNone(reader.ha1("bob", "example.org", "MD5"))
        self.path.write_text("garbage line\n")
        self.assertRaises(UsersFileError, reader.refresh)
        self.assertFalse(reader.refresh())
        self.assertIsNotNone(reader.ha1("bob", "example.org", "MD5"))

    def test_not_utf8(self) -> None:
        """Bytes that are not UTF-8 are an error naming the line."""
        self.path.write_bytes(b"# ok\n\xff\xfe\n")
        error = self.assertRaises(UsersFileError, UsersFile.load, self.path)
        self.assertIn(f"{self.path}:2:", str(error))

    def test_missing_file_names_fix(self) -> None:
        """A missing users file is an error that says how to create it."""
        error = self.assertRaises(UsersFileError, UsersFile.load, self.path)
        self.assertIn("p2psip users add", str(error))

    def test_bad_edits(self) -> None:
        """Malformed AORs, realms and empty passwords are refused."""
        users = UsersFile.load(self.path, missing_ok=True)
        self.assertRaises(UsersFileError, users.set_password, "alice", "pw")
        self.assertRaises(UsersFileError, users.set_password, "sip:alice@example.org", "")
        self.assertRaises(
            UsersFileError, users.set_password, "sip:alice@example.org", "pw", "two words"
        )

    def test_username_clash(self) -> None:
        """Two AORs may not share a username within one realm."""
        users = UsersFile.load(self.path, missing_ok=True)
        users.set_password("sip:alice@example.org", "pw", realm="r")
        self.assertRaises(UsersFileError, users.set_password, "sip:alice@other.org", "pw", "r")

    @settings(max_examples=50)
    @given(
        st.binary(max_size=400) | st.text(alphabet="sip:@ .=\n#MD5SHA-256abcdef0123", max_size=400)
    )
    def test_garbage_only_users_file_error(self, content: bytes | str) -> None:
        """Any content either loads or raises UsersFileError, nothing else."""
        path = self.directory / "fuzz"
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        try:
            UsersFile.load(path)
        except UsersFileError:
            pass

    def test_aor_helpers(self) -> None:
        """AORs split into scheme, user and domain, lower-casing all but the user."""
        self.assertEqual(split_aor("SIP:Alice@Example.Org"), ("sip", "Alice", "example.org"))
        self.assertEqual(canonical_aor("sips:bob@EXAMPLE.org"), "sips:bob@example.org")
        self.assertRaises(ValueError, split_aor, "tel:+123")


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.path = self.directory / "users"
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def run_command(self, *argv: str, stdin: str = "") -> int:
        self.patch(sys, "stdin", io.StringIO(stdin))
        return main(list(argv))

    def test_add_password_from_stdin(self) -> None:
        """``users add`` reads the password from standard input."""
        status = self.run_command(
            "users", "add", "--file", str(self.path), "sip:alice@example.org", stdin="wonderland\n"
        )
        self.assertEqual(status, 0)
        self.assertEqual(UsersFile.load(self.path).ha1("alice", "example.org", "MD5"), MD5_HA1)

    def test_add_password_option_and_realm(self) -> None:
        """``--password`` and ``--realm`` are honoured, and a second add changes the user."""
        self.run_command(
            "users", "add", "--file", str(self.path), "--password", "a", "sip:alice@example.org"
        )
        status = self.run_command(
            "users",
            "add",
            "--file",
            str(self.path),
            "--realm",
            "ring",
            "--password",
            "b",
            "sip:alice@example.org",
        )
        self.assertEqual(status, 0)
        self.assertIn("changed", self.stdout.getvalue())
        users = UsersFile.load(self.path)
        self.assertEqual(
            users.ha1("alice", "ring", "MD5"), compute_ha1("MD5", "alice", "ring", "b")
        )

    def test_list_and_remove(self) -> None:
        """``users list`` shows AORs without secrets; ``users remove`` deletes one."""
        self.run_command(
            "users", "add", "--file", str(self.path), "--password", "a", "sip:alice@example.org"
        )
        self.run_command(
            "users", "add", "--file", str(self.path), "--password", "b", "sip:bob@example.org"
        )
        self.assertEqual(
            self.run_command("users", "remove", "--file", str(self.path), "sip:bob@example.org"), 0
        )
        self.stdout.truncate(0)
        self.stdout.seek(0)
        self.assertEqual(self.run_command("users", "list", "--file", str(self.path)), 0)
        self.assertEqual(
            self.stdout.getvalue(), "sip:alice@example.org\texample.org\tMD5,SHA-256\n"
        )

    def test_errors_go_to_stderr(self) -> None:
        """Failures exit 1 with a message naming the file or the problem."""
        self.assertEqual(self.run_command("users", "list", "--file", str(self.path)), 1)
        self.assertIn(str(self.path), self.stderr.getvalue())
        self.assertEqual(
            self.run_command("users", "add", "--file", str(self.path), "sip:alice@example.org"), 1
        )
        self.assertIn("password", self.stderr.getvalue())
        self.run_command(
            "users", "add", "--file", str(self.path), "--password", "a", "sip:alice@example.org"
        )
        self.assertEqual(
            self.run_command("users", "remove", "--file", str(self.path), "sip:zed@example.org"), 1
        )


class DomainCheckTests(SynchronousTestCase):
    """``users add`` does not quietly take users a super-node of the domain can never register."""

    setUp = CommandTests.setUp
    run_command = CommandTests.run_command

    def add(self, aor: str, *extra: str) -> int:
        return self.run_command(
            "users", "add", "--file", str(self.path), "--password", "pw", *extra, aor
        )

    def test_domain_refuses_other_domains_and_realms(self) -> None:
        """With --domain, an AOR or realm of another domain is refused and the file is not written."""
        self.assertEqual(self.add("sip:bob@other.org", "--domain", "example.org"), 1)
        message = self.stderr.getvalue()
        self.assertIn("sip:bob@other.org is not in example.org", message)
        self.assertIn("sip:USER@example.org", message)
        self.assertFalse(self.path.exists())
        self.assertEqual(
            self.add("sip:bob@example.org", "--domain", "example.org", "--realm", "ring"), 1
        )
        self.assertIn("realm 'ring' is not example.org", self.stderr.getvalue())
        self.assertEqual(self.add("sip:bob@EXAMPLE.org", "--domain", "Example.org"), 0)

    def test_warns_about_a_domain_unlike_the_others(self) -> None:
        """Without --domain, an AOR of another domain than the file's users is added with a warning."""
        self.assertEqual(self.add("sip:alice@example.org"), 0)
        self.assertEqual(self.stderr.getvalue(), "")
        self.assertEqual(self.add("sip:alice@example.org"), 0)  # a password change
        self.assertEqual(self.stderr.getvalue(), "")
        self.assertEqual(self.add("sip:bob@other.org"), 0)
        self.assertIn(
            "warning: sip:bob@other.org is not in example.org, the domain of the other users",
            self.stderr.getvalue(),
        )

    def test_log_names(self) -> None:
        """list --log-names prints the name info-level logs give each user."""
        from p2psip.sip.blur import blur_aor

        self.add("sip:alice@example.org")
        self.assertEqual(
            self.run_command("users", "list", "--file", str(self.path), "--log-names"), 0
        )
        self.assertEqual(
            self.stdout.getvalue().splitlines()[-1].split("\t")[-1],
            blur_aor("sip:alice@example.org"),
        )
        self.assertEqual(blur_aor("sip:alice@example.org"), "sip:~2bd806c9@example.org")
