"""Tests for RELOAD message bodies (RFC 6940 s6.4, s6.5, s7 and CHORD-RELOAD s9)."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay import bodies as b
from p2psip.overlay.codec import DecodeError, Limits, UnknownKindError
from p2psip.overlay.message import (
    Destination,
    ErrorCode,
    NO_SIGNATURE,
    MessageCode,
    Signature,
    SignerIdentity,
    SignerIdentityType,
)
from tests.overlay.test_message import (
    destinations,
    ids,
    short_bytes,
    signatures,
    u8,
    u16,
    u32,
    u64,
)

SINGLE, ARRAY, DICTIONARY = 10, 11, 12
MODELS = {
    SINGLE: b.DataModel.SINGLE_VALUE,
    ARRAY: b.DataModel.ARRAY,
    DICTIONARY: b.DataModel.DICTIONARY,
}
SIGNATURE = Signature(4, 3, SignerIdentity(SignerIdentityType.CERT_HASH, 4, b"\x01" * 32), b"sig")


# -- strategies -------------------------------------------------------------------

node_lists = st.lists(ids, max_size=4).map(tuple)
data_values = st.builds(b.DataValue, st.booleans(), short_bytes)
stored_values_by_model = {
    b.DataModel.SINGLE_VALUE: data_values,
    b.DataModel.ARRAY: st.builds(b.ArrayEntry, u32, data_values),
    b.DataModel.DICTIONARY: st.builds(b.DictionaryEntry, short_bytes, data_values),
}
metadata = st.builds(b.MetaData, st.booleans(), u32, u8, short_bytes)
metadata_by_model = {
    b.DataModel.SINGLE_VALUE: metadata,
    b.DataModel.ARRAY: st.builds(b.ArrayEntryMeta, u32, metadata),
    b.DataModel.DICTIONARY: st.builds(b.DictionaryEntryMeta, short_bytes, metadata),
}
kinds = st.sampled_from(sorted(MODELS))


def stored_data(kind: int) -> st.SearchStrategy[b.StoredData]:
    return st.builds(b.StoredData, u64, u32, stored_values_by_model[MODELS[kind]], signatures)


def specifier(kind: int) -> st.SearchStrategy[b.StoredDataSpecifier]:
    model = MODELS[kind]
    indices: st.SearchStrategy[Any] = st.just(())
    keys: st.SearchStrategy[Any] = st.just(())
    if model == b.DataModel.ARRAY:
        indices = st.lists(st.builds(b.ArrayRange, u32, u32), max_size=3).map(tuple)
    elif model == b.DataModel.DICTIONARY:
        keys = st.lists(short_bytes, max_size=3).map(tuple)
    return st.builds(b.StoredDataSpecifier, st.just(kind), u64, indices, keys, st.just(model))


store_kind_data = kinds.flatmap(
    lambda k: st.builds(
        b.StoreKindData, st.just(k), u64, st.lists(stored_data(k), max_size=2).map(tuple)
    )
)
fetch_kind_responses = kinds.flatmap(
    lambda k: st.builds(
        b.FetchKindResponse, st.just(k), u64, st.lists(stored_data(k), max_size=2).map(tuple)
    )
)
stat_kind_responses = kinds.flatmap(
    lambda k: st.builds(
        b.StatKindResponse,
        st.just(k),
        u64,
        st.lists(
            st.builds(b.StoredMetaData, u64, u32, metadata_by_model[MODELS[k]]), max_size=2
        ).map(tuple),
    )
)
specifiers = st.lists(kinds.flatmap(specifier), max_size=3).map(tuple)

update_requests = st.one_of(
    st.builds(b.UpdateReq, u32, st.just(b.ChordUpdateType.PEER_READY)),
    st.builds(b.UpdateReq, u32, st.just(b.ChordUpdateType.NEIGHBORS), node_lists, node_lists),
    st.builds(
        b.UpdateReq, u32, st.just(b.ChordUpdateType.FULL), node_lists, node_lists, node_lists
    ),
)

addresses = st.builds(b.IpAddressPort, st.ip_addresses().map(str), u16)
candidates = st.one_of(
    st.builds(
        b.IceCandidate,
        addresses,
        u8,
        short_bytes,
        u32,
        st.just(b.CandidateType.HOST),
        st.none(),
        st.lists(st.builds(b.IceExtension, short_bytes, short_bytes), max_size=2).map(tuple),
    ),
    st.builds(
        b.IceCandidate,
        addresses,
        u8,
        short_bytes,
        u32,
        st.sampled_from([b.CandidateType.SERVER_REFLEXIVE, b.CandidateType.RELAYED]),
        addresses,
    ),
)
candidate_lists = st.lists(candidates, max_size=3).map(tuple)

bodies: st.SearchStrategy[Any] = st.one_of(
    st.builds(b.AttachReq, short_bytes, short_bytes, short_bytes, candidate_lists, st.booleans()),
    st.builds(b.AttachAns, short_bytes, short_bytes, short_bytes, candidate_lists, st.booleans()),
    st.builds(b.AppAttachReq, short_bytes, short_bytes, u16, short_bytes, candidate_lists),
    st.builds(b.AppAttachAns, short_bytes, short_bytes, u16, short_bytes, candidate_lists),
    st.builds(b.FindReq, ids, st.lists(u32, max_size=4).map(tuple)),
    st.builds(b.FindAns, st.lists(st.builds(b.FindKindData, u32, ids), max_size=3).map(tuple)),
    st.builds(b.JoinReq, ids, short_bytes),
    st.builds(b.JoinAns, short_bytes),
    st.builds(b.LeaveReq, ids, short_bytes),
    st.just(b.LeaveAns()),
    update_requests,
    st.just(b.UpdateAns()),
    st.builds(b.RouteQueryReq, st.booleans(), destinations, short_bytes),
    st.builds(b.RouteQueryAns, ids),
    st.builds(b.PingReq, short_bytes),
    st.builds(b.PingAns, u64, u64),
    st.builds(b.ProbeReq, st.lists(u8, max_size=4).map(tuple)),
    st.builds(b.ProbeAns, st.lists(st.builds(b.ProbeInformation, u8, u32), max_size=3).map(tuple)),
    st.builds(b.StoreReq, ids, u8, st.lists(store_kind_data, max_size=3).map(tuple)),
    st.builds(
        b.StoreAns,
        st.lists(st.builds(b.StoreKindResponse, u32, u64, node_lists), max_size=3).map(tuple),
    ),
    st.builds(b.FetchReq, ids, specifiers),
    st.builds(b.FetchAns, st.lists(fetch_kind_responses, max_size=3).map(tuple)),
    st.builds(b.StatReq, ids, specifiers),
    st.builds(b.StatAns, st.lists(stat_kind_responses, max_size=3).map(tuple)),
    st.builds(b.ErrorResponse, u16.filter(lambda c: c not in (5, 12)), st.text(max_size=20)),
    st.builds(b.ErrorResponse, st.sampled_from([5, 12]), st.just(""), short_bytes),
)


def sample_store() -> b.StoreReq:
    return b.StoreReq(
        resource=0x00112233445566778899AABBCCDDEEFF,
        replica_number=0,
        kind_data=(
            b.StoreKindData(
                DICTIONARY,
                3,
                (
                    b.StoredData(
                        1000, 3600, b.DictionaryEntry(b"key", b.DataValue(True, b"v")), SIGNATURE
                    ),
                ),
            ),
            b.StoreKindData(SINGLE, 1, (b.StoredData(1, 2, b.DataValue(False, b""), SIGNATURE),)),
            b.StoreKindData(
                ARRAY, 0, (b.StoredData(1, 2, b.ArrayEntry(5, b.DataValue(True, b"a")), SIGNATURE),)
            ),
        ),
    )


class RoundTripTests(SynchronousTestCase):
    def check(self, body: Any) -> None:
        data = body.encode()
        decoded = type(body).decode(data, data_models=MODELS)
        self.assertEqual(decoded, body)
        self.assertEqual(decoded.encode(), data)
        self.assertEqual(b.decode_body(body.CODE, data, data_models=MODELS), body)

    def test_join(self) -> None:
        """JoinReq and JoinAns round-trip."""
        self.check(b.JoinReq(7, b"chord"))
        self.check(b.JoinAns(b"x"))
        self.check(b.JoinAns())

    def test_leave(self) -> None:
        """LeaveReq with CHORD-RELOAD leave data, and the empty LeaveAns, round-trip."""
        leave = b.ChordLeaveData(b.ChordLeaveType.FROM_PREDECESSOR, (1, 2, 3))
        self.assertEqual(b.ChordLeaveData.decode(leave.encode()), leave)
        self.check(b.LeaveReq(9, leave.encode()))
        self.check(b.LeaveAns())
        self.assertEqual(b.LeaveAns().encode(), b"")

    def test_update(self) -> None:
        """Each ChordUpdate type round-trips."""
        self.check(b.UpdateReq(5, b.ChordUpdateType.PEER_READY))
        self.check(b.UpdateReq(5, b.ChordUpdateType.NEIGHBORS, (1,), (2, 3)))
        self.check(b.UpdateReq(5, b.ChordUpdateType.FULL, (1,), (2, 3), (4, 5, 6)))
        self.check(b.UpdateAns())

    def test_route_query(self) -> None:
        """RouteQueryReq and the CHORD-RELOAD RouteQueryAns round-trip."""
        self.check(b.RouteQueryReq(True, Destination.resource(99), b""))
        self.check(b.RouteQueryAns(123))

    def test_ping_probe(self) -> None:
        """Ping and Probe bodies round-trip."""
        self.check(b.PingReq(b"\x00" * 10))
        self.check(b.PingAns(1, 1700000000000))
        self.check(
            b.ProbeReq((b.ProbeInformationType.UPTIME, b.ProbeInformationType.NUM_RESOURCES))
        )
        self.check(b.ProbeAns((b.ProbeInformation(b.ProbeInformationType.UPTIME, 77),)))

    def test_store(self) -> None:
        """StoreReq with all three data models, and StoreAns, round-trip."""
        self.check(sample_store())
        self.check(b.StoreAns((b.StoreKindResponse(DICTIONARY, 4, (1, 2)),)))

    def test_fetch(self) -> None:
        """FetchReq with each kind of specifier, and FetchAns, round-trip."""
        self.check(
            b.FetchReq(
                5,
                (
                    b.StoredDataSpecifier(SINGLE, 0, data_model=b.DataModel.SINGLE_VALUE),
                    b.StoredDataSpecifier(
                        ARRAY,
                        0,
                        indices=(b.ArrayRange(0, 0xFFFFFFFF),),
                        data_model=b.DataModel.ARRAY,
                    ),
                    b.StoredDataSpecifier(
                        DICTIONARY, 0, keys=(b"a", b"b"), data_model=b.DataModel.DICTIONARY
                    ),
                ),
            )
        )
        store = sample_store()
        self.check(
            b.FetchAns(
                tuple(
                    b.FetchKindResponse(k.kind, k.generation_counter, k.values)
                    for k in store.kind_data
                )
            )
        )

    def test_stat(self) -> None:
        """StatReq and StatAns round-trip."""
        self.check(
            b.StatReq(
                5,
                (
                    b.StoredDataSpecifier(
                        DICTIONARY, 0, keys=(b"a",), data_model=b.DataModel.DICTIONARY
                    ),
                ),
            )
        )
        meta = b.MetaData(True, 3, 4, b"\x09" * 32)
        self.check(
            b.StatAns(
                (
                    b.StatKindResponse(SINGLE, 1, (b.StoredMetaData(1, 2, meta),)),
                    b.StatKindResponse(
                        ARRAY, 1, (b.StoredMetaData(1, 2, b.ArrayEntryMeta(3, meta)),)
                    ),
                    b.StatKindResponse(
                        DICTIONARY, 1, (b.StoredMetaData(1, 2, b.DictionaryEntryMeta(b"k", meta)),)
                    ),
                )
            )
        )

    def test_attach(self) -> None:
        """Attach and AppAttach with host and relayed candidates round-trip."""
        host = b.IceCandidate(
            b.IpAddressPort("192.0.2.1", 6084),
            b.OverlayLinkType.TLS_TCP_FH_NO_ICE,
            b"f1",
            100,
            b.CandidateType.HOST,
        )
        relayed = b.IceCandidate(
            b.IpAddressPort("2001:db8::1", 5),
            4,
            b"f2",
            5,
            b.CandidateType.RELAYED,
            b.IpAddressPort("198.51.100.2", 7),
            (b.IceExtension(b"n", b"v"),),
        )
        self.check(b.AttachReq(b"u", b"p", b"active", (host, relayed), True))
        self.check(b.AttachAns(b"u", b"p", b"passive", (host,)))
        self.check(b.AppAttachReq(b"u", b"p", 5060, b"active", (host,)))
        self.check(b.AppAttachAns(b"u", b"p", 5060, b"passive", ()))

    def test_find(self) -> None:
        """FindReq and FindAns round-trip."""
        self.check(b.FindReq(5, (1, 2)))
        self.check(b.FindAns((b.FindKindData(1, 0), b.FindKindData(2, 77))))

    def test_error(self) -> None:
        """ErrorResponse round-trips with a UTF-8 reason phrase."""
        self.check(b.ErrorResponse(ErrorCode.NOT_FOUND, "nicht gefunden \u2013 404"))
        self.check(b.ErrorResponse(ErrorCode.UNKNOWN_KIND, "", b.encode_unknown_kinds([7])))
        self.check(b.ErrorResponse(ErrorCode.FORBIDDEN, "", b"\xff\xfe"))

    def test_error_phrase_and_info(self) -> None:
        """With both a phrase and structured info, the info is what is sent."""
        error = b.ErrorResponse(ErrorCode.UNKNOWN_KIND, "unknown kind", b.encode_unknown_kinds([7]))
        decoded = b.ErrorResponse.decode(error.encode())
        self.assertEqual(decoded.error_info, error.error_info)
        self.assertEqual(b.decode_unknown_kinds(decoded.error_info), (7,))

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(bodies)
    def test_any_body(self, body: Any) -> None:
        """Any body round-trips and re-encodes to the same bytes."""
        self.check(body)


class DispatchTests(SynchronousTestCase):
    def test_body_types(self) -> None:
        """Every message code but ConfigUpdate has a body class whose CODE is its key."""
        missing = set(MessageCode) - set(b.BODY_TYPES)
        self.assertEqual(missing, {MessageCode.CONFIG_UPDATE_REQ, MessageCode.CONFIG_UPDATE_ANS})
        for code, body_type in b.BODY_TYPES.items():
            self.assertEqual(getattr(body_type, "CODE"), code)


class LayoutTests(SynchronousTestCase):
    def test_with_replica_number(self) -> None:
        """A StoreReq patched to another replica_number is that StoreReq encoded anew."""
        value = b.StoredData(7, 60, b.DataValue(True, b"v"), NO_SIGNATURE)
        kind_data = (b.StoreKindData(1, 0, (value,)),)
        original = b.StoreReq(5, 0, kind_data).encode()
        self.assertEqual(b.with_replica_number(original, 2), b.StoreReq(5, 2, kind_data).encode())
        for bad in (b"", b"\x10abc"):
            self.assertRaises(ValueError, b.with_replica_number, bad, 1)
        self.assertRaises(ValueError, b.with_replica_number, original, 256)

    def test_join_req(self) -> None:
        """JoinReq is a 16-byte Node-ID then a uint16-prefixed overlay_specific."""
        self.assertEqual(b.JoinReq(1, b"ab").encode(), (1).to_bytes(16, "big") + b"\x00\x02ab")

    def test_update_neighbors(self) -> None:
        """A neighbors update is uptime, type, then two uint16-byte-length node lists."""
        data = b.UpdateReq(9, b.ChordUpdateType.NEIGHBORS, (1,), ()).encode()
        self.assertEqual(
            data, b"\x00\x00\x00\x09\x02" + b"\x00\x10" + (1).to_bytes(16, "big") + b"\x00\x00"
        )

    def test_route_query_req(self) -> None:
        """RouteQueryReq is send_update, a Destination, then overlay_specific."""
        data = b.RouteQueryReq(True, Destination.node(2)).encode()
        self.assertEqual(data, b"\x01\x01\x10" + (2).to_bytes(16, "big") + b"\x00\x00")

    def test_ping_ans(self) -> None:
        """PingAns is two uint64 values."""
        self.assertEqual(b.PingAns(1, 2).encode(), struct.pack(">QQ", 1, 2))

    def test_probe(self) -> None:
        """ProbeReq is a uint8-length list of types; ProbeAns items are type, length 4, uint32."""
        self.assertEqual(b.ProbeReq((3, 1)).encode(), b"\x02\x03\x01")
        self.assertEqual(
            b.ProbeAns((b.ProbeInformation(3, 7),)).encode(), b"\x00\x06\x03\x04\x00\x00\x00\x07"
        )

    def test_stored_data(self) -> None:
        """StoredData is a uint32 length, storage_time, lifetime, value, signature."""
        stored = b.StoredData(1, 2, b.DataValue(True, b"v"), SIGNATURE)
        data = b.StoreReq(3, 0, (b.StoreKindData(SINGLE, 0, (stored,)),)).encode()
        # resource<1>, replica, kind_data<4>, kind, generation, values<4>, StoredData length
        offset = 17 + 1 + 4 + 4 + 8 + 4
        (length,) = struct.unpack_from(">I", data, offset)
        self.assertEqual(length, len(data) - offset - 4)
        self.assertEqual(data[offset + 4 : offset + 16], struct.pack(">QI", 1, 2))
        self.assertEqual(data[offset + 16 : offset + 22], b"\x01\x00\x00\x00\x01v")

    def test_specifier(self) -> None:
        """A specifier carries a uint16 length around its model-specific part."""
        spec = b.StoredDataSpecifier(DICTIONARY, 5, keys=(b"k",))
        data = b.FetchReq(1, (spec,)).encode()
        self.assertEqual(
            data[17:],
            b"\x00\x13" + struct.pack(">IQ", DICTIONARY, 5) + b"\x00\x05\x00\x03\x00\x01k",
        )

    def test_attach_layout(self) -> None:
        """An Attach body has the RFC's field widths, with a 6-byte IPv4 IpAddressPort."""
        host = b.IceCandidate(b.IpAddressPort("192.0.2.1", 6084), 4, b"f", 9, b.CandidateType.HOST)
        data = b.AttachReq(b"u", b"p", b"active", (host,), True).encode()
        candidate = (
            b"\x01\x06\xc0\x00\x02\x01\x17\xc4"
            + b"\x04"
            + b"\x01f"
            + b"\x00\x00\x00\x09"
            + b"\x01"
            + b"\x00\x00"
        )
        self.assertEqual(
            data,
            b"\x01u\x01p\x06active" + len(candidate).to_bytes(2, "big") + candidate + b"\x01",
        )

    def test_stored_metadata(self) -> None:
        """StoredMetaData starts with the byte length of the rest, as StoredData does."""
        meta = b.StoredMetaData(
            value_length=999, storage_time=1, lifetime=2, metadata=b.MetaData(True, 5, 4, b"hh")
        )
        data = b.StatAns((b.StatKindResponse(SINGLE, 0, (meta,)),)).encode()
        offset = 4 + 4 + 8 + 4
        self.assertEqual(
            data[offset:],
            struct.pack(">IQI", 21, 1, 2) + b"\x01\x00\x00\x00\x05\x04\x02hh",
        )
        decoded = b.StatAns.decode(data, data_models=MODELS)
        self.assertEqual(decoded.kind_responses[0].values[0].value_length, 21)

    def test_error_response(self) -> None:
        """ErrorResponse is the code and a uint16-prefixed error_info carrying the text."""
        self.assertEqual(b.ErrorResponse(3, "gone").encode(), b"\x00\x03\x00\x04gone")
        self.assertEqual(b.ErrorResponse(12, "", b"\x00").encode(), b"\x00\x0c\x00\x01\x00")

    def test_signature_input(self) -> None:
        """The StoredData signature covers resource, kind, storage_time, value, identity."""
        value = b.DataValue(True, b"v")
        identity = SIGNATURE.identity
        data = b.stored_data_signature_input(7, SINGLE, 99, b.encode_stored_value(value), identity)
        self.assertEqual(
            data,
            (7).to_bytes(16, "big")
            + struct.pack(">IQ", SINGLE, 99)
            + b"\x01\x00\x00\x00\x01v"
            + b"\x01\x00\x22\x04\x20"
            + b"\x01" * 32,
        )

    def test_unknown_kinds_info(self) -> None:
        """Error_Unknown_Kind's error_info is a uint8-length list of uint32 kinds."""
        self.assertEqual(b.encode_unknown_kinds([1, 2]), b"\x08\x00\x00\x00\x01\x00\x00\x00\x02")
        self.assertEqual(b.decode_unknown_kinds(b.encode_unknown_kinds([1, 2])), (1, 2))


class UnknownKindTests(SynchronousTestCase):
    def test_store(self) -> None:
        """A StoreReq naming unknown kinds raises UnknownKindError listing all of them."""
        data = sample_store().encode()
        error = self.assertRaises(
            UnknownKindError,
            b.StoreReq.decode,
            data,
            data_models={SINGLE: b.DataModel.SINGLE_VALUE},
        )
        self.assertEqual(error.kinds, (DICTIONARY, ARRAY))

    def test_no_models(self) -> None:
        """Without any data models every kind is unknown."""
        error = self.assertRaises(
            UnknownKindError, b.decode_body, MessageCode.STORE_REQ, sample_store().encode()
        )
        self.assertEqual(sorted(error.kinds), sorted(MODELS))

    def test_fetch_and_stat(self) -> None:
        """FetchReq, StatReq, FetchAns and StatAns report unknown kinds."""
        spec = b.StoredDataSpecifier(DICTIONARY, 0, keys=(b"k",))
        for body in (
            b.FetchReq(1, (spec,)),
            b.StatReq(1, (spec,)),
            b.FetchAns((b.FetchKindResponse(DICTIONARY, 0, ()),)),
            b.StatAns((b.StatKindResponse(DICTIONARY, 0, ()),)),
        ):
            error = self.assertRaises(
                UnknownKindError, type(body).decode, body.encode(), data_models={}
            )
            self.assertEqual(error.kinds, (DICTIONARY,))

    def test_is_decode_error(self) -> None:
        """UnknownKindError is a DecodeError so a catch-all for bad input still catches it."""
        self.assertTrue(issubclass(UnknownKindError, DecodeError))

    def test_structure_checked_first(self) -> None:
        """A malformed body with an unknown kind is a plain DecodeError, not an unknown kind."""
        data = sample_store().encode() + b"\x00"
        try:
            b.StoreReq.decode(data, data_models={})
        except UnknownKindError:
            self.fail("trailing garbage reported as an unknown kind")
        except DecodeError:
            pass


class HostileBodyTests(SynchronousTestCase):
    def test_unknown_code(self) -> None:
        """A body for a code without a decoder raises DecodeError."""
        self.assertRaises(DecodeError, b.decode_body, 5, b"")
        self.assertRaises(DecodeError, b.decode_body, 0x7777, b"")

    def test_huge_list_length(self) -> None:
        """A 2**32-1 list length raises DecodeError."""
        self.assertRaises(DecodeError, b.FetchAns.decode, b"\xff\xff\xff\xff", data_models=MODELS)
        self.assertRaises(
            DecodeError,
            b.StoreReq.decode,
            b"\x10" + b"\x00" * 16 + b"\x00\xff\xff\xff\xff",
            data_models=MODELS,
        )

    def test_too_many_items(self) -> None:
        """A list with more items than the limit raises DecodeError."""
        body = b.UpdateReq(1, b.ChordUpdateType.NEIGHBORS, tuple(range(5)), ())
        self.assertRaises(DecodeError, b.UpdateReq.decode, body.encode(), Limits(max_list_items=4))
        self.assertEqual(b.UpdateReq.decode(body.encode(), Limits(max_list_items=5)), body)

    def test_error_info_not_text(self) -> None:
        """An error_info that is not UTF-8 is kept as bytes, and its length is checked."""
        self.assertEqual(
            b.ErrorResponse.decode(b"\x00\x02\x00\x01\xff"), b.ErrorResponse(2, "", b"\xff")
        )
        self.assertRaises(DecodeError, b.ErrorResponse.decode, b"\x00\x02\x00\x02\xff")

    def test_wrong_resource_length(self) -> None:
        """A Resource-ID that is not 16 bytes raises DecodeError."""
        self.assertRaises(DecodeError, b.FetchReq.decode, b"\x01\x00\x00\x00", data_models=MODELS)

    def test_bad_address(self) -> None:
        """An IpAddressPort of unknown type or wrong length raises DecodeError."""
        host = b.IceCandidate(b.IpAddressPort("192.0.2.1", 1), 4, b"", 0, b.CandidateType.HOST)
        data = bytearray(b.AppAttachReq(b"", b"", 5060, b"", (host,)).encode())
        candidate_at = 1 + 1 + 2 + 1 + 2
        for offset, value in ((candidate_at, 9), (candidate_at + 1, 7)):
            bad = bytearray(data)
            bad[offset] = value
            self.assertRaises(DecodeError, b.AppAttachReq.decode, bytes(bad))

    def test_unknown_update_type(self) -> None:
        """An unknown ChordUpdate type raises DecodeError."""
        self.assertRaises(DecodeError, b.UpdateReq.decode, b"\x00\x00\x00\x01\x09")

    def test_nonempty_empty_answer(self) -> None:
        """LeaveAns and UpdateAns with content raise DecodeError."""
        self.assertRaises(DecodeError, b.LeaveAns.decode, b"\x00")
        self.assertRaises(DecodeError, b.UpdateAns.decode, b"\x00")

    def test_inconsistent_update_encode(self) -> None:
        """Encoding a peer_ready update with node lists is a programming error."""
        self.assertRaises(ValueError, b.UpdateReq(1, b.ChordUpdateType.PEER_READY, (1,)).encode)

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(sorted(b.BODY_TYPES)), st.binary(max_size=120))
    def test_garbage(self, code: int, data: bytes) -> None:
        """Random bytes for any body raise nothing but DecodeError."""
        try:
            b.decode_body(code, data, data_models=MODELS)
        except DecodeError:
            pass

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(bodies, st.data())
    def test_truncation_and_corruption(self, body: Any, data: st.DataObject) -> None:
        """Truncated or corrupted bodies raise nothing but DecodeError."""
        encoded = body.encode()
        end = data.draw(st.integers(min_value=0, max_value=len(encoded)))
        truncated = encoded[:end]
        for candidate in (truncated,):
            try:
                b.decode_body(body.CODE, candidate, data_models=MODELS)
            except DecodeError:
                pass
        if encoded:
            offset = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
            value = data.draw(st.integers(min_value=0, max_value=255))
            corrupted = encoded[:offset] + bytes([value]) + encoded[offset + 1 :]
            try:
                decoded = b.decode_body(body.CODE, corrupted, data_models=MODELS)
            except DecodeError:
                return
            self.assertEqual(decoded.encode(), corrupted)


def _general_encoding(stored: b.StoredData) -> bytes:
    """What the general writer makes of a StoredData (the length-prefixed form, unwrapped)."""
    writer = b.Writer()
    b._write_stored_data(writer, stored)
    return writer.getvalue()[4:]


@st.composite
def _stored_data(draw: st.DrawFn) -> tuple[b.StoredData, b.DataModel]:
    from p2psip.overlay.message import Signature, SignerIdentity, SignerIdentityType

    model = draw(st.sampled_from(list(b.DataModel)))
    payload = b.DataValue(draw(st.booleans()), draw(st.binary(max_size=300)))
    value: Any = payload
    if model is b.DataModel.ARRAY:
        value = b.ArrayEntry(draw(st.integers(0, 2**32 - 1)), payload)
    elif model is b.DataModel.DICTIONARY:
        value = b.DictionaryEntry(draw(st.binary(max_size=40)), payload)
    if draw(st.booleans()):
        identity = SignerIdentity(
            draw(
                st.sampled_from(
                    [SignerIdentityType.CERT_HASH, SignerIdentityType.CERT_HASH_NODE_ID]
                )
            ),
            draw(st.integers(0, 255)),
            draw(st.binary(max_size=64)),
        )
    else:
        identity = SignerIdentity(SignerIdentityType.NONE, 0, b"")
    signature = Signature(
        draw(st.integers(0, 255)), draw(st.integers(0, 255)), identity, draw(st.binary(max_size=80))
    )
    stored = b.StoredData(
        draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**32 - 1)), value, signature
    )
    return stored, model


class HeldStoredDataTests(SynchronousTestCase):
    """The by-hand StoredData form a peer holds its values in is the wire form exactly."""

    @given(_stored_data())
    def test_same_bytes_as_the_writer_and_back(
        self, case: tuple[b.StoredData, b.DataModel]
    ) -> None:
        stored, model = case
        encoded = b.encode_stored_data(stored)
        self.assertEqual(encoded, _general_encoding(stored))
        self.assertEqual(b.decode_stored_data(encoded, model), stored)

    def test_damage_is_a_decode_error(self) -> None:
        """Cut short or with trailing bytes, the held form is refused like any wire bytes."""
        from tests.overlay.test_storage import single

        encoded = b.encode_stored_data(single(b"v"))
        for damaged in (encoded[:-1], encoded + b"\x00", encoded[:5]):
            self.assertRaises(DecodeError, b.decode_stored_data, damaged, b.DataModel.SINGLE_VALUE)

    def test_out_of_range_is_named(self) -> None:
        """A field too long for its length prefix raises the writer's ValueError."""
        from tests.overlay.test_storage import single

        stored = single(b"v")
        too_long = b.DictionaryEntry(b"k" * 0x10000, b.DataValue(True, b""))
        self.assertRaises(ValueError, b.encode_stored_data, evolve_value(stored, too_long))


def evolve_value(stored: b.StoredData, value: Any) -> b.StoredData:
    return b.StoredData(stored.storage_time, stored.lifetime, value, stored.signature)
