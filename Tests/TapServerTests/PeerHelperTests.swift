import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The test support's own checks: a helper that waits wrongly makes other tests flaky, not wrong, so it gets a test.
@Suite("Test helpers")
struct PeerHelperTests {
    /// A unix socket bound at `path`, listening when `listen` is true; the caller closes it.
    func unixSocket(_ path: String, listen doListen: Bool) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw PeerError("socket: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, !doListen || Glibc.listen(fd, 1) == 0 else {
            close(fd)
            throw PeerError("bind/listen \(path): errno \(errno)")
        }
        return fd
    }

    @Test("a listening socket is seen however many sockets come before it in /proc/net/unix; a bound one is not")
    func listeningBehindManySockets() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        // Far more than the 4 KiB (about 45 lines) that String(contentsOfFile:) reads of a /proc file.
        var fds = try (0..<300).map { try unixSocket(dir.file("filler-\($0).sock"), listen: true) }
        defer { fds.forEach { close($0) } }
        fds.append(try unixSocket(dir.file("bound.sock"), listen: false))
        fds.append(try unixSocket(dir.file("listening.sock"), listen: true))
        #expect(PeerProcess.isListening(dir.file("listening.sock")))
        #expect(!PeerProcess.isListening(dir.file("bound.sock")), "bound but not listening yet")
        #expect(!PeerProcess.isListening(dir.file("absent.sock")))
    }
}
