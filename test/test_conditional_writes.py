"""Conditional writes and deletes (``If-None-Match: *``, ``If-Match``, DeleteObjects ``<ETag>``):
boto3 over a real socket to in-process daemons on local-directory backends.

The race tests put two create-only PUTs of one key in flight at once, through one daemon and
through two daemons sharing one database (SQLite, PostgreSQL, MariaDB): both pass the early check
(the key is absent), both write their bytes, and only the commit's compare and swap can tell them
apart.  Exactly one gets 200, the other 412, and the loser's bytes are gone from the backends.
With the compare and swap switched off the same race gives two 200s, so the test can fail.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import time
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from s3balance.db import objects as objects_module
from s3balance.db.store import UNCONDITIONAL
from test.dbfixture import MYSQL_SERVER, POSTGRES_SERVER, ServerDatabase
from test.support import unavailable
from test.support.daemon import (
    Daemon,
    DaemonTestCase,
    in_thread,
    local_buckets,
    start_daemon,
    without_write_ids,
)


class ConditionalWriteTests(DaemonTestCase, unittest.TestCase):  # type: ignore[misc]
    timeout = 60

    async def put(self, key: str, body: bytes, **conditions: str) -> Any:
        return await self.call(self.s3.put_object, Bucket="vb", Key=key, Body=body, **conditions)

    async def body_of(self, key: str) -> bytes:
        got = await self.call(self.s3.get_object, Bucket="vb", Key=key)
        return bytes(got["Body"].read())

    async def real_keys_of(self, key: str) -> list[str]:
        keys = await self.backend_keys()
        return [k for k in without_write_ids(keys["r1"] + keys["r2"]) if k == f"vb/{key}"]

    async def test_put_if_none_match_creates_only_once(self) -> None:
        await self.put("lock", b"owner A", IfNoneMatch="*")
        code, status, _ = await self.error_of(
            self.s3.put_object, Bucket="vb", Key="lock", Body=b"owner B", IfNoneMatch="*"
        )
        self.assertEqual((code, status), ("PreconditionFailed", 412))
        self.assertEqual(await self.body_of("lock"), b"owner A")
        self.assertEqual(await self.real_keys_of("lock"), ["vb/lock"])

    async def test_a_failed_condition_is_answered_before_the_body(self) -> None:
        await self.put("lock", b"owner A")

        def headers_only() -> tuple[int, bytes]:
            connection = http.client.HTTPConnection(
                "127.0.0.1", self.daemon.port_number, timeout=10
            )
            connection.putrequest("PUT", "/vb/lock")
            connection.putheader("Content-Length", str(64 << 20))
            connection.putheader("If-None-Match", "*")
            connection.endheaders()  # and not one body byte
            response = connection.getresponse()
            answer = (response.status, response.read())
            connection.close()
            return answer

        status, body = await in_thread(headers_only)
        self.assertEqual(status, 412)
        self.assertIn(b"<Code>PreconditionFailed</Code>", body)
        self.assertEqual(await self.real_keys_of("lock"), ["vb/lock"])

    async def test_put_if_match(self) -> None:
        first = await self.put("k", b"one")
        second = await self.put("k", b"two", IfMatch=first["ETag"])
        code, status, _ = await self.error_of(
            self.s3.put_object, Bucket="vb", Key="k", Body=b"three", IfMatch=first["ETag"]
        )
        self.assertEqual((code, status), ("PreconditionFailed", 412))
        self.assertEqual(await self.body_of("k"), b"two")
        code, status, _ = await self.error_of(
            self.s3.put_object, Bucket="vb", Key="missing", Body=b"x", IfMatch=second["ETag"]
        )
        self.assertEqual((code, status), ("NoSuchKey", 404))
        keys = await self.backend_keys()
        self.assertEqual(without_write_ids(keys["r1"] + keys["r2"]), ["vb/k"])

    async def test_if_none_match_other_than_star_is_refused(self) -> None:
        code, status, _ = await self.error_of(
            self.s3.put_object, Bucket="vb", Key="k", Body=b"x", IfNoneMatch='"abc"'
        )
        self.assertEqual((code, status), ("NotImplemented", 501))

    async def test_complete_multipart_upload_conditions(self) -> None:
        await self.put("big", b"old")
        upload = await self.call(self.s3.create_multipart_upload, Bucket="vb", Key="big")
        part = await self.call(
            self.s3.upload_part, Bucket="vb", Key="big", UploadId=upload["UploadId"],
            PartNumber=1, Body=b"new",
        )
        parts = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
        code, status, _ = await self.error_of(
            self.s3.complete_multipart_upload, Bucket="vb", Key="big",
            UploadId=upload["UploadId"], MultipartUpload=parts, IfNoneMatch="*",
        )
        self.assertEqual((code, status), ("PreconditionFailed", 412))
        code, status, _ = await self.error_of(
            self.s3.complete_multipart_upload, Bucket="vb", Key="big",
            UploadId=upload["UploadId"], MultipartUpload=parts, IfMatch='"0" ',
        )
        self.assertEqual((code, status), ("PreconditionFailed", 412))
        self.assertEqual(await self.body_of("big"), b"old")
        head = await self.call(self.s3.head_object, Bucket="vb", Key="big")
        done = await self.call(
            self.s3.complete_multipart_upload, Bucket="vb", Key="big",
            UploadId=upload["UploadId"], MultipartUpload=parts, IfMatch=head["ETag"],
        )
        self.assertEqual(await self.body_of("big"), b"new")
        # Repeated after it succeeded: the same result, as S3 answers while it can.
        again = await self.call(
            self.s3.complete_multipart_upload, Bucket="vb", Key="big",
            UploadId=upload["UploadId"], MultipartUpload=parts,
        )
        self.assertEqual(again["ETag"], done["ETag"])
        self.assertEqual(await self.real_keys_of("big"), ["vb/big"])

    async def test_copy_object_conditions_are_on_the_destination(self) -> None:
        await self.put("src", b"source")
        dest = await self.put("dst", b"dest")
        code, status, _ = await self.error_of(
            self.s3.copy_object, Bucket="vb", Key="dst", CopySource="vb/src", IfNoneMatch="*"
        )
        self.assertEqual((code, status), ("PreconditionFailed", 412))
        code, status, _ = await self.error_of(
            self.s3.copy_object, Bucket="vb", Key="dst", CopySource="vb/src", IfMatch='"stale"'
        )
        self.assertEqual((code, status), ("PreconditionFailed", 412))
        self.assertEqual(await self.body_of("dst"), b"dest")
        await self.call(
            self.s3.copy_object, Bucket="vb", Key="dst", CopySource="vb/src",
            IfMatch=dest["ETag"],
        )
        self.assertEqual(await self.body_of("dst"), b"source")
        await self.call(
            self.s3.copy_object, Bucket="vb", Key="new", CopySource="vb/src", IfNoneMatch="*"
        )
        self.assertEqual(await self.body_of("new"), b"source")

    async def test_delete_object_if_match(self) -> None:
        put = await self.put("k", b"data")
        code, status, _ = await self.error_of(
            self.s3.delete_object, Bucket="vb", Key="k", IfMatch='"0123"'
        )
        self.assertEqual((code, status), ("PreconditionFailed", 412))
        self.assertEqual(await self.body_of("k"), b"data")
        await self.call(self.s3.delete_object, Bucket="vb", Key="k", IfMatch=put["ETag"])
        self.assertEqual(await self.backend_keys(), {"r1": [], "r2": []})
        code, status, _ = await self.error_of(
            self.s3.delete_object, Bucket="vb", Key="k", IfMatch=put["ETag"]
        )
        self.assertEqual((code, status), ("NoSuchKey", 404))

    async def test_delete_conditions_we_do_not_serve_are_refused(self) -> None:
        await self.put("k", b"data")
        code, status, _ = await self.error_of(
            self.s3.delete_object, Bucket="vb", Key="k", IfMatchSize=4
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        self.assertEqual(await self.body_of("k"), b"data")

    async def test_delete_objects_entries_with_etags(self) -> None:
        a = await self.put("a", b"a")
        await self.put("b", b"b")
        answer = await self.call(
            self.s3.delete_objects,
            Bucket="vb",
            Delete={
                "Objects": [
                    {"Key": "a", "ETag": a["ETag"]},
                    {"Key": "b", "ETag": '"ffffffffffffffffffffffffffffffff"'},
                ]
            },
        )
        self.assertEqual([d["Key"] for d in answer.get("Deleted", [])], ["a"])
        self.assertEqual(
            [(e["Key"], e["Code"]) for e in answer["Errors"]], [("b", "PreconditionFailed")]
        )
        self.assertEqual(await self.body_of("b"), b"b")

    async def test_clients_cannot_set_the_reserved_metadata(self) -> None:
        code, status, _ = await self.error_of(
            self.s3.put_object, Bucket="vb", Key="k", Body=b"x",
            Metadata={"s3balance-key": "b3RoZXI"},
        )
        self.assertEqual((code, status), ("InvalidArgument", 400))
        self.assertEqual(await self.backend_keys(), {"r1": [], "r2": []})


# -- the race ---------------------------------------------------------------------------------

BODY_SIZE = 200_000


def _open_put(port: int, key: str, body: bytes) -> http.client.HTTPConnection:
    """A create-only PUT sent up to half its body (the daemon has its headers)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest("PUT", f"/vb/{key}")
    connection.putheader("Content-Length", str(len(body)))
    connection.putheader("If-None-Match", "*")
    connection.endheaders()
    connection.send(body[: len(body) // 2])
    return connection


def _finish_put(connection: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    connection.send(body[len(body) // 2 :])
    response = connection.getresponse()
    answer = (response.status, response.read())
    connection.close()
    return answer


def _temp_files(roots: list[str]) -> int:
    count = 0
    for root in roots:
        tmp = os.path.join(root, "tmp")
        if os.path.isdir(tmp):
            count += len(os.listdir(tmp))
    return count


class RaceTests(unittest.TestCase):
    """Two create-only writers of one key, racing to the commit (see the module docstring)."""

    timeout = 60
    #: The database server, or None for a SQLite file.
    server: str | None = None

    def setUp(self) -> defer.Deferred[None]:  # type: ignore[override]
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="s3b-race-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.database_url: str | None = None
        if self.server is not None:
            database = ServerDatabase(self.server)
            reason = database.unreachable_reason()
            if reason is not None:
                unavailable(reason)
            self.database_url = database.create()
            self.addCleanup(database.drop)
        self.daemons: list[Daemon] = []

    async def daemon(self) -> Daemon:
        """A daemon over the shared backends r1, r2 and (after the first) the shared database."""
        url = self.database_url
        if url is None and self.daemons:
            url = self.daemons[0].database_url
        daemon = await start_daemon(
            self.workdir, local_buckets(self.workdir, ["r1", "r2"]), database_url=url
        )
        self.addCleanup(lambda: defer.ensureDeferred(daemon.stop()))
        self.daemons.append(daemon)
        return daemon

    async def race(self, ports: list[int], key: str) -> list[tuple[int, bytes]]:
        bodies = [bytes([65 + n]) * BODY_SIZE for n in range(2)]
        roots = [os.path.join(self.workdir, name) for name in ("r1", "r2")]
        before = _temp_files(roots)
        connections = [
            await in_thread(_open_put, port, key, body)
            for port, body in zip(ports, bodies, strict=True)
        ]
        # Both writes have begun on a backend: both passed the early check.
        deadline = time.monotonic() + 10
        while _temp_files(roots) < before + 2:
            self.assertLess(time.monotonic(), deadline, "the two writes never both began")
            await _sleep(0.01)
        finished = [
            in_thread(_finish_put, connection, body)
            for connection, body in zip(connections, bodies, strict=True)
        ]
        return list(await defer.gatherResults(finished))

    async def check_one_winner(self, ports: list[int]) -> None:
        answers = await self.race(ports, "lock")
        statuses = sorted(status for status, _ in answers)
        self.assertEqual(statuses, [200, 412], answers)
        loser = next(body for status, body in answers if status == 412)
        self.assertIn(b"<Code>PreconditionFailed</Code>", loser)
        daemon = self.daemons[0]
        record = await daemon.store.get_object("vb", "lock")
        assert record is not None
        keys = [*await daemon.real_keys("r1"), *await daemon.real_keys("r2")]
        self.assertEqual(keys, [record.locations[0].real_key])  # the loser's bytes are gone

    async def test_through_one_daemon_exactly_one_wins(self) -> None:
        daemon = await self.daemon()
        await self.check_one_winner([daemon.port_number, daemon.port_number])

    async def test_through_two_daemons_sharing_the_database_exactly_one_wins(self) -> None:
        first = await self.daemon()
        second = await self.daemon()
        await self.check_one_winner([first.port_number, second.port_number])

    async def test_without_the_compare_and_swap_both_would_win(self) -> None:
        """The race is real: a commit that ignores the condition lets both writers through."""
        real = objects_module._commit_object

        def unconditional(
            conn: Any, record: Any, condition: Any, delete_after: float, *rest: Any
        ) -> Any:
            return real(conn, record, UNCONDITIONAL, delete_after, *rest)

        objects_module._commit_object = unconditional  # type: ignore[assignment]
        self.addCleanup(setattr, objects_module, "_commit_object", real)
        first = await self.daemon()
        second = await self.daemon()
        answers = await self.race([first.port_number, second.port_number], "lock")
        self.assertEqual(sorted(status for status, _ in answers), [200, 200])


class PostgresRaceTests(RaceTests):
    server = POSTGRES_SERVER


class MariaDBRaceTests(RaceTests):
    server = MYSQL_SERVER


async def _sleep(seconds: float) -> None:
    from twisted.internet import reactor, task

    await task.deferLater(reactor, seconds, lambda: None)
