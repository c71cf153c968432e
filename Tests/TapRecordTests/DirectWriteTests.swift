import CTapSupport
import Foundation
import NIOCore
import TapRecord
import TapWire
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The writer's direct I/O path (whole aligned blocks with O_DIRECT, the tail through the page cache and written
/// again with its block) must leave exactly the bytes the buffered path leaves, after every flush.
@Suite struct DirectWriteTests {
    private final class Dir {
        let path: String
        init() throws {
            path = NSTemporaryDirectory() + "taprecord-direct-" + UUID().uuidString
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        deinit { try? FileManager.default.removeItem(atPath: path) }
    }

    private static let id = (0..<16).map { UInt8($0 * 7) }

    private static func writer(_ path: String, direct: Bool, limits: RecordingLimits) throws -> RecordingWriter {
        try RecordingWriter(
            path: path, limits: limits, listen: "unix:/l", upstream: "unix:/u", toolVersion: "test",
            directIO: direct, sessionID: id, clock: { 1_700_000_000_000_000_000 })
    }

    /// True where the file system takes O_DIRECT (tmpfs does not): probed on a file of its own.
    private static func supportsDirectIO(_ dir: String) -> Bool {
        let probe = dir + "/probe"
        FileManager.default.createFile(atPath: probe, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: probe) }
        let fd = tap_open_direct_for_writing(probe)
        guard fd >= 0 else { return false }
        close(fd)
        return true
    }

    /// Records of every size: small control records, messages from empty to several direct blocks long.
    private static func records(count: Int, seed: UInt64) -> [SessionRecord] {
        var rng = Scramble(seed)
        var out: [SessionRecord] = []
        for i in 0..<count {
            let call = UInt64(i)
            let size: Int
            switch rng.next() % 10 {
            case 0: size = Int(rng.next() % (9 << 20))  // up to 9 MiB: more than two direct blocks of 4 MiB
            case 1, 2: size = Int(rng.next() % (300 << 10))
            default: size = Int(rng.next() % 200)
            }
            var bytes = ByteBuffer()
            bytes.writeRepeatingByte(UInt8(truncatingIfNeeded: i &* 31 &+ 7), count: size)
            // In pieces of up to 16 KiB, as a message arrives in DATA frames.
            var payload = ByteChain()
            var split = Scramble(UInt64(i) &+ seed)  // its own sequence: the sizes above stay those of `seed`
            while bytes.readableBytes > 0 {
                payload.append(bytes.readSlice(length: min(bytes.readableBytes, 1 + Int(split.next() % (16 << 10))))!)
            }
            out.append(.requestEnded(call: call, time: UInt64(i)))
            out.append(
                .message(
                    call: call, time: UInt64(i), direction: i % 2 == 0 ? .clientToServer : .serverToClient,
                    compressed: false, length: UInt32(size), payload: payload))
        }
        return out
    }

    /// Where two files first differ (nil when they are equal): a byte offset, or the shorter length.
    private static func firstDifference(_ a: String, _ b: String) throws -> Int? {
        let (x, y) = (try Data(contentsOf: URL(fileURLWithPath: a)), try Data(contentsOf: URL(fileURLWithPath: b)))
        if x == y { return nil }
        return x.withUnsafeBytes { xs in
            y.withUnsafeBytes { ys in
                (0..<min(xs.count, ys.count)).first { xs[$0] != ys[$0] } ?? min(xs.count, ys.count)
            }
        }
    }

    @Test(
        "direct and buffered writers leave identical bytes after every flush, across whole blocks, tails written twice and rotation",
        arguments: [UInt64(1), 2, 3])
    func identicalToBuffered(seed: UInt64) throws {
        let dir = try Dir()
        var limits = RecordingLimits()
        limits.maxMessageBytes = 16 << 20
        limits.maxFileBytes = 24 << 20
        limits.maxFiles = 100
        // The same file name in two folders: a file names the next one in its last record.
        for sub in ["direct", "buffered"] {
            try FileManager.default.createDirectory(atPath: dir.path + "/" + sub, withIntermediateDirectories: false)
        }
        let direct = try Self.writer(dir.path + "/direct/rec", direct: true, limits: limits)
        let buffered = try Self.writer(dir.path + "/buffered/rec", direct: false, limits: limits)
        #expect(!buffered.isWritingDirectly)
        if Self.supportsDirectIO(dir.path) {
            #expect(direct.isWritingDirectly, "the file system takes O_DIRECT but the writer did not use it")
        }
        var rng = Scramble(seed &* 977)
        var flushes = 0
        for record in Self.records(count: 80, seed: seed) {
            try direct.append(record)
            try buffered.append(record)
            // Flush now and then, as the recorder does when it goes idle: the tail goes through the page cache.
            if rng.next() % 4 == 0 {
                try direct.flush()
                try buffered.flush()
                flushes += 1
                #expect(direct.files.count == buffered.files.count)
                let difference = try Self.firstDifference(direct.files.last!, buffered.files.last!)
                #expect(difference == nil, "\(direct.files.last!) after flush \(flushes)")
            }
        }
        try direct.finish()
        try buffered.finish()
        #expect(flushes > 10)
        #expect(direct.files.count > 1, "the sizes should make the recording rotate")
        #expect(direct.files.count == buffered.files.count)
        for (a, b) in zip(direct.files, buffered.files) {
            #expect(try Self.firstDifference(a, b) == nil, "\(a)")
        }
        let session = try RecordedSession.load(path: dir.path + "/direct/rec")
        #expect(session.tails.allSatisfy { $0.tail == .complete })
    }
}

/// Deterministic, well-spread numbers for sizes and flush points (a multiplicative hash of a counter), so a failing
/// seed can be rerun.
private struct Scramble {
    private var counter: UInt64
    init(_ seed: UInt64) { counter = seed << 32 }
    mutating func next() -> UInt64 {
        counter &+= 1
        let x = counter &* 0x9E37_79B9_7F4A_7C15
        return x ^ (x >> 29)
    }
}
