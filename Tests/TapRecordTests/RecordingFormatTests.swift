import Foundation
import NIOCore
import TapRecord
import TapWire
import Testing

private final class Dir {
    let path: String
    init() throws {
        path = NSTemporaryDirectory() + "taprecord-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func file(_ name: String) -> String { path + "/" + name }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

private let clock: @Sendable () -> UInt64 = { 1_700_000_000_000_000_000 }

private func writer(_ path: String, _ limits: RecordingLimits = RecordingLimits()) throws -> RecordingWriter {
    try RecordingWriter(
        path: path, limits: limits, listen: "unix:/l", upstream: "unix:/u", toolVersion: "test", clock: clock)
}

private func event(_ kind: WireEvent.Kind, stream: UInt32 = 1, yamux: UInt32? = nil, time: UInt64 = 5) -> WireEvent {
    WireEvent(kind, time: time, streamID: stream, yamuxStreamID: yamux)
}

private func message(_ direction: Direction, _ bytes: [UInt8], length: Int? = nil) -> WireEvent.Kind {
    .message(
        WireMessage(
            direction: direction, compressed: false, length: length ?? bytes.count, payload: ByteBuffer(bytes: bytes)))
}

/// A call with a binary request (all 256 byte values), a streamed answer and trailers.
private func sampleEvents() -> [WireEvent] {
    let headers = [
        RawHeaderField(name: ":path", value: Array("/gitaly.RefService/FindAllBranches".utf8)),
        RawHeaderField(name: "authorization", value: [], redacted: true),
        RawHeaderField(name: "username", value: Array("alice".utf8)),
        RawHeaderField(name: "relative-path-bin", value: [0, 1, 2, 0xFF]),
    ]
    return [
        event(.callStarted(path: "/gitaly.RefService/FindAllBranches", headers: headers)),
        event(message(.clientToServer, (0...255).map { UInt8($0) })),
        event(.requestEnded),
        event(.responseHeaders([RawHeaderField(name: ":status", value: Array("200".utf8))])),
        event(message(.serverToClient, [1, 2, 3])),
        event(message(.serverToClient, [])),
        event(
            .trailers(
                [
                    RawHeaderField(name: "grpc-status", value: Array("5".utf8)),
                    RawHeaderField(name: "grpc-message", value: Array("not%20found".utf8)),
                ], trailersOnly: false)),
        event(.callEnded(.trailers), time: 9),
    ]
}

private func record(_ events: [WireEvent], to path: String, limits: RecordingLimits = RecordingLimits()) throws
    -> RecordingWriter
{
    let w = try writer(path, limits)
    var encoder = EventEncoder(limits: limits)
    try w.append(.connectionOpened(connection: 1, time: 1, transport: "unix", peer: ""))
    for e in events {
        for r in encoder.records(for: e, connection: 1) { try w.append(r) }
    }
    return w
}

@Suite struct RecordingFormatTests {
    @Test("a written call reads back with its binary payloads, headers, status and times")
    func roundTrip() throws {
        let dir = try Dir()
        let path = dir.file("rec")
        try record(sampleEvents(), to: path).finish()
        let session = try RecordedSession.load(path: path)
        #expect(session.endedInOrder)
        #expect(session.tails.map(\.tail) == [.complete])
        #expect(session.segments.count == 1)
        let call = try #require(session.calls.first)
        #expect(call.path == "/gitaly.RefService/FindAllBranches")
        #expect(call.requests.map(\.bytes) == [(0...255).map { UInt8($0) }])
        #expect(call.responses.map(\.bytes) == [[1, 2, 3], []])
        #expect(call.statusCode == 5)
        #expect(call.statusName == "NOT_FOUND")
        #expect(call.statusMessage == "not found")
        #expect(call.duration == 4)
        #expect(call.requestHeader("relative-path-bin")?.value == [0, 1, 2, 0xFF])
        #expect(call.requestHeader("authorization")?.redacted == true)
        #expect(call.requestHeader("username")?.text == "alice")
        #expect(call.requestComplete)
    }

    @Test("a message kept as several DATA pieces is stored as the same bytes as in one piece, and capped across pieces")
    func messageInPieces() throws {
        let bytes = (0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        var whole = ByteBuffer(bytes: bytes)
        var pieces = ByteChain()
        for size in [1, 999, 2000, 2000] { pieces.append(whole.readSlice(length: size)!) }
        let split = WireMessage(direction: .clientToServer, compressed: false, length: 5000, pieces: pieces)
        let one = WireMessage(direction: .clientToServer, compressed: false, length: 5000, payload: ByteBuffer(bytes: bytes))
        var limits = RecordingLimits()
        limits.maxMessageBytes = 3000
        var files: [[UInt8]] = []
        for message in [split, one] {
            let dir = try Dir()
            let path = dir.file("rec")
            let events = [
                event(.callStarted(path: "/p.S/M", headers: [])), event(.message(message)), event(.callEnded(.trailers)),
            ]
            try record(events, to: path, limits: limits).finish()
            let session = try RecordedSession.load(path: path)
            #expect(session.calls.first?.requests.map(\.bytes) == [Array(bytes.prefix(3000))])
            #expect(session.calls.first?.requests.first?.length == 5000)
            // The files differ only in their session ids and times; the message records must be equal.
            let data = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
            files.append(data)
        }
        let records = files.map { file -> [UInt8] in
            // The message record: its 27-byte head (length, type, call, time, direction, flags, message length),
            // the 3000 stored bytes and the CRC.
            guard let at = (0..<(file.count - 16)).first(where: { Array(file[$0..<$0 + 16]) == Array(bytes.prefix(16)) })
            else { return [] }
            return Array(file[(at - 27)..<(at + 3004)])
        }
        #expect(!records[0].isEmpty)
        #expect(records[0] == records[1], "the record's head and payload are byte for byte the same")
    }

    @Test("the file is created with mode 0600, also when it existed with a wider mode")
    func fileMode() throws {
        let dir = try Dir()
        let path = dir.file("rec")
        _ = FileManager.default.createFile(
            atPath: path, contents: Data("old".utf8), attributes: [.posixPermissions: 0o644])
        try record(sampleEvents(), to: path).finish()
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    @Test(
        "authorization never reaches the file, even if a decoder handed its value over; --redact withholds user names")
    func redaction() throws {
        let dir = try Dir()
        let path = dir.file("rec")
        var limits = RecordingLimits()
        limits.redactPersonal = true
        let secret = "Bearer v2.deadbeefcafe.1700000000"
        let leaky = [
            event(
                .callStarted(
                    path: "/a.B/C",
                    headers: [
                        RawHeaderField(name: "Authorization", value: Array(secret.utf8)),
                        RawHeaderField(name: "username", value: Array("alice-the-user".utf8)),
                        RawHeaderField(name: "user_id", value: Array("424242".utf8)),
                        RawHeaderField(name: "x-gitlab-correlation-id", value: Array("corr-1".utf8)),
                    ]))
        ]
        try record(leaky, to: path, limits: limits).finish()
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(bytes.range(of: Data(secret.utf8)) == nil)
        #expect(bytes.range(of: Data("deadbeefcafe".utf8)) == nil)
        #expect(bytes.range(of: Data("alice-the-user".utf8)) == nil)
        #expect(bytes.range(of: Data("424242".utf8)) == nil)
        #expect(bytes.range(of: Data("corr-1".utf8)) != nil)
        let session = try RecordedSession.load(path: path)
        let headers = try #require(session.calls.first?.requestHeaders)
        #expect(headers.filter(\.redacted).map(\.name) == ["authorization", "username", "user_id"])
        // Not even the key's name is stored: the marker is a flag.
        #expect(String(decoding: bytes, as: UTF8.self).lowercased().contains("authorization") == false)
        #expect(session.segments.first?.personalMetadataRedacted == true)
    }

    @Test("a message longer than the cap keeps its real length and first bytes, and says it was cut")
    func messageCap() throws {
        let dir = try Dir()
        let path = dir.file("rec")
        var limits = RecordingLimits()
        limits.maxMessageBytes = 10
        let events = [
            event(.callStarted(path: "/a.B/C", headers: [])),
            event(message(.serverToClient, Array(0..<100))),
            event(message(.serverToClient, Array(0..<8), length: 50)),
        ]
        try record(events, to: path, limits: limits).finish()
        let call = try #require(try RecordedSession.load(path: path).calls.first)
        #expect(call.responses.map(\.length) == [100, 50])
        #expect(call.responses.map(\.bytes) == [Array(0..<10), Array(0..<8)])
        #expect(call.responses.allSatisfy { $0.truncated })
        #expect(!call.requestComplete)
    }

    @Test("a sidechannel past its cap is counted in full and a notice says bytes were not stored")
    func sidechannelCap() throws {
        let dir = try Dir()
        let path = dir.file("rec")
        var limits = RecordingLimits()
        limits.maxSidechannelBytes = 6
        let events = [
            event(.sidechannelOpened(id: 77), stream: 0, yamux: 4),
            event(.sidechannelData(.serverToClient, ByteBuffer(bytes: Array(0..<4))), stream: 0, yamux: 4),
            event(.sidechannelData(.serverToClient, ByteBuffer(bytes: Array(0..<4))), stream: 0, yamux: 4),
            event(.sidechannelData(.serverToClient, ByteBuffer(bytes: Array(0..<4))), stream: 0, yamux: 4),
            event(.sidechannelEnded(.closed), stream: 0, yamux: 4),
        ]
        try record(events, to: path, limits: limits).finish()
        let session = try RecordedSession.load(path: path)
        let sc = try #require(session.sidechannels.first)
        #expect(sc.sidechannelID == 77)
        #expect(sc.bytesToClient == 12)
        #expect(sc.storedToClient == 6)
        #expect(sc.cut)
        #expect(session.notices.filter { $0.kind == .sidechannelCut }.count == 1)
    }

    @Test("a file cut at any byte of its last record reads up to the torn record and reports it")
    func tornTailAtEveryOffset() throws {
        let dir = try Dir()
        let path = dir.file("rec")
        let w = try record(sampleEvents(), to: path)
        try w.flush()
        let whole = try Data(contentsOf: URL(fileURLWithPath: path))
        // The last record is callEnded (8 + 8 + 1 + 1 + 4 + 2 bytes of body).
        let lastRecord = 4 + 1 + 24 + 4
        let goodEnd = whole.count - lastRecord
        for cut in (goodEnd + 1)..<whole.count {
            let torn = dir.file("torn")
            try whole.prefix(cut).write(to: URL(fileURLWithPath: torn))
            let session = try RecordedSession.load(path: torn)
            #expect(session.calls.count == 1)
            #expect(session.calls.first?.responses.count == 2)
            #expect(session.calls.first?.end == nil, "the torn callEnded must not be read")
            #expect(
                session.tails.first?.tail
                    == .torn(
                        offset: UInt64(goodEnd), bytes: UInt64(cut - goodEnd),
                        reason: session.tails.first.map { if case .torn(_, _, let r) = $0.tail { r } else { "" } } ?? ""
                    ))
        }
        let exact = dir.file("exact")
        try whole.prefix(goodEnd).write(to: URL(fileURLWithPath: exact))
        #expect(try RecordedSession.load(path: exact).tails.first?.tail == .unterminated)
    }

    @Test("a flipped byte inside a record fails its checksum: reading stops there")
    func corruptRecord() throws {
        let dir = try Dir()
        let path = dir.file("rec")
        try record(sampleEvents(), to: path).finish()
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let marker = Data([1, 2, 3])
        let at = try #require(bytes.range(of: marker)).lowerBound
        bytes[at] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: path))
        let session = try RecordedSession.load(path: path)
        #expect(session.calls.first?.responses.isEmpty == true)
        guard case .torn(_, _, let reason)? = session.tails.first?.tail else {
            Issue.record("expected a torn tail, got \(String(describing: session.tails.first?.tail))")
            return
        }
        #expect(reason.contains("checksum"))
    }

    @Test("a full file is closed with a pointer to the next one; reading follows the chain")
    func rotation() throws {
        let dir = try Dir()
        let path = dir.file("rec")
        var limits = RecordingLimits()
        limits.maxFileBytes = 4_000
        let w = try writer(path, limits)
        var encoder = EventEncoder(limits: limits)
        for i in 0..<60 {
            for e in [
                event(.callStarted(path: "/a.B/C\(i)", headers: []), stream: UInt32(2 * i + 1)),
                event(message(.clientToServer, [UInt8](repeating: UInt8(i), count: 100)), stream: UInt32(2 * i + 1)),
                event(.callEnded(.trailers), stream: UInt32(2 * i + 1)),
            ] {
                for r in encoder.records(for: e, connection: 1) { try w.append(r) }
            }
        }
        try w.finish()
        #expect(w.files.count > 1)
        #expect(w.files[1] == path + ".1")
        for file in w.files {
            let size = try FileManager.default.attributesOfItem(atPath: file)[.size] as! Int
            #expect(size <= 4_000)
        }
        let session = try RecordedSession.load(path: path)
        #expect(session.calls.map(\.path) == (0..<60).map { "/a.B/C\($0)" })
        #expect(session.calls.allSatisfy { $0.requests.count == 1 })
        #expect(session.segments.map(\.index) == (0..<UInt32(w.files.count)).map { $0 })
        #expect(session.tails.allSatisfy { $0.tail == .complete })
    }

    @Test("when the last allowed file is full, recording stops with a notice and closes that file in order")
    func fileLimit() throws {
        let dir = try Dir()
        let path = dir.file("rec")
        var limits = RecordingLimits()
        limits.maxFileBytes = 3_000
        limits.maxFiles = 2
        let w = try writer(path, limits)
        for i in 0..<100 {
            try w.append(
                .message(
                    call: 1, time: 1, direction: .clientToServer, compressed: false, length: 50,
                    payload: ByteChain(ByteBuffer(bytes: [UInt8](repeating: UInt8(i), count: 50)))))
        }
        #expect(w.isStopped)
        #expect(w.files.count == 2)
        let session = try RecordedSession.load(path: path)
        #expect(session.notices.contains { $0.kind == .recordingStopped && $0.text.contains("2 files") })
        #expect(session.tails.map(\.tail) == [.complete, .complete], "the last file has its end marker")
        #expect(session.endedInOrder)
        for file in w.files {
            let size = try FileManager.default.attributesOfItem(atPath: file)[.size] as! Int
            #expect(size <= 3_000)
        }
    }

    @Test(
        "a message or sidechannel piece larger than a whole file is stored cut or split over records: no file passes its cap"
    )
    func recordLargerThanAFile() throws {
        let dir = try Dir()
        let path = dir.file("rec")
        var limits = RecordingLimits()
        limits.maxFileBytes = 64 * 1024
        let big = (0..<(150 * 1024)).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let events = [
            event(.callStarted(path: "/a.B/C", headers: [])),
            event(message(.serverToClient, big)),
            event(.callEnded(.trailers)),
            event(.sidechannelOpened(id: 5), stream: 0, yamux: 4),
            event(.sidechannelData(.serverToClient, ByteBuffer(bytes: big)), stream: 0, yamux: 4),
            event(.sidechannelEnded(.closed), stream: 0, yamux: 4),
        ]
        let w = try record(events, to: path, limits: limits)
        try w.finish()
        #expect(w.files.count > 3, "the sidechannel's bytes go on in the next files")
        for file in w.files {
            let size = try FileManager.default.attributesOfItem(atPath: file)[.size] as! Int
            #expect(size <= 64 * 1024, "\(file)")
        }
        let session = try RecordedSession.load(path: path)
        #expect(session.endedInOrder)
        let answer = try #require(session.calls.first?.responses.first)
        #expect(answer.length == big.count, "the record keeps the message's real length")
        #expect(answer.truncated)
        #expect(answer.bytes == Array(big.prefix(answer.storedLength)))
        #expect(answer.storedLength > 60 * 1024, "it keeps what a file can hold")
        var stored: [UInt8] = []
        _ = try RecordingReader.forEachRecord(path: path) { record in
            if case .sidechannelData(_, _, _, let payload) = record { stored += payload.readableBytesView }
        }
        #expect(stored == big, "sidechannel bytes are split, none lost")
        let sidechannel = try #require(session.sidechannels.first)
        #expect(sidechannel.bytesToClient == UInt64(big.count) && !sidechannel.cut)
    }

    @Test("records of an unknown type are skipped; another major version or a foreign file is refused clearly")
    func versioning() throws {
        let dir = try Dir()
        let path = dir.file("rec")
        let w = try writer(path)
        try w.append(.unknown(type: 0x7F))
        try w.append(.notice(time: 1, kind: .info, text: "after"))
        try w.finish()
        let session = try RecordedSession.load(path: path)
        #expect(session.unknownRecords == 1)
        #expect(session.notices.map(\.text) == ["after"])

        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[9] = 2
        try bytes.write(to: URL(fileURLWithPath: path))
        #expect(throws: RecordFormatError.self) { try RecordedSession.load(path: path) }
        let foreign = dir.file("foreign")
        try Data("hello, not a recording at all".utf8).write(to: URL(fileURLWithPath: foreign))
        do {
            _ = try RecordedSession.load(path: foreign)
            Issue.record("a foreign file was accepted")
        } catch {
            #expect(error.description.contains("not a gitaly-tap recording"))
        }
    }

    @Test("CRC-32 matches the standard check value")
    func crc() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum([UInt8]()) == 0)
    }

    @Test("CRC-32 of long inputs matches zlib's (the carry-less fold where the CPU has it)")
    func crcLong() {
        // Values from zlib's crc32 (Python: zlib.crc32(...)).
        #expect(CRC32.checksum((0..<100_003).map { UInt8($0 % 251) }) == 0xBCE3_A8C1)
        #expect(CRC32.checksum([UInt8](repeating: 0x5A, count: 1 << 20)) == 0x8D02_798E)
    }

    @Test("CRC-32: the fold and the tables agree on every length, alignment and split")
    func crcFoldMatchesTables() {
        #if arch(x86_64) && os(Linux)
            // The fold must really be in use where the CPU has it, or this test compares the tables with themselves.
            let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
            let flags = cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") } ?? ""
            let words = Set(flags.split(separator: " "))
            #expect(CRC32.hasCarrylessFold == (words.contains("pclmulqdq") && words.contains("sse4_1")))
        #endif
        var generator = SystemRandomNumberGenerator()
        let data = (0..<4_200).map { _ in UInt8.random(in: 0...255, using: &generator) }
        data.withUnsafeBytes { all in
            for length in Array(0...300) + [1_023, 1_024, 1_025, 4_096, 4_111] {
                for offset in [0, 1, 7, 13] where offset + length <= all.count {
                    let slice = UnsafeRawBufferPointer(rebasing: all[offset..<(offset + length)])
                    let expected = CRC32.tableOnlyUpdate(0, slice)
                    #expect(CRC32.update(0, slice) == expected, "length \(length), offset \(offset)")
                    // Two pieces continue one checksum, whatever the split.
                    let cut = length / 3
                    let first = CRC32.update(0, UnsafeRawBufferPointer(rebasing: slice[0..<cut]))
                    #expect(CRC32.update(first, UnsafeRawBufferPointer(rebasing: slice[cut...])) == expected)
                }
            }
        }
    }
}
