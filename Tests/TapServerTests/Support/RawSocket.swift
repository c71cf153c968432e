import Foundation

/// A blocking client socket for byte-level tests (no HTTP/2 stack in the way).
final class RawSocket: @unchecked Sendable {  // a file descriptor; tests use it from one thread per direction
    private(set) var fd: Int32

    /// Connects to `unix:/path` or `tcp://127.0.0.1:port`.
    init(connectingTo address: String) throws {
        if address.hasPrefix("unix:") {
            let path = String(address.dropFirst("unix:".count))
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var sa = sockaddr_un()
            sa.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &sa.sun_path) { raw in
                let bytes = Array(path.utf8)
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            let rc = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard rc == 0 else { throw failConnect(address) }
        } else {
            let hostPort = address.dropFirst("tcp://".count)
            let colon = hostPort.lastIndex(of: ":")!
            let port = UInt16(hostPort[hostPort.index(after: colon)...])!
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = port.bigEndian
            sa.sin_addr.s_addr = inet_addr(String(hostPort[..<colon]))
            let rc = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else { throw failConnect(address) }
        }
    }

    /// Takes over a connected descriptor (an accepted socket); it is closed with this object.
    init(adopting fd: Int32) { self.fd = fd }

    deinit { if fd >= 0 { Foundation.close(fd) } }

    /// Closes the descriptor of a failed connect and marks it closed: a class whose `init` throws after its
    /// properties are set still runs `deinit`, which would otherwise close the same number again, by then perhaps
    /// another thread's socket (that double close crashed NIO's accept in the test process).
    private func failConnect(_ address: String) -> PeerError {
        let error = PeerError("connect \(address): errno \(errno)")
        Foundation.close(fd)
        fd = -1
        return error
    }

    /// Closes now, with an RST instead of a FIN when `reset` (SO_LINGER with a zero timeout).
    func close(reset: Bool = false) {
        guard fd >= 0 else { return }
        if reset {
            var option = linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
        }
        Foundation.close(fd)
        fd = -1
    }

    func write(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            guard n > 0 else { throw PeerError("write failed: errno \(errno)") }
            offset += n
        }
    }

    /// Reads until EOF, at most `limit` bytes, or until `timeout` passes without data.
    func readToEnd(limit: Int = .max, timeout: TimeInterval = 30, onChunk: (([UInt8]) -> Void)? = nil) throws -> Int {
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var total = 0
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        while total < limit {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n == 0 { break }
            guard n > 0 else { throw PeerError("read failed after \(total) bytes: errno \(errno)") }
            total += n
            onChunk?(Array(buffer[0..<n]))
        }
        return total
    }

    func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }
}

/// Resident set size of a process in KiB, from /proc.
func residentKiB(pid: Int32) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? 0
    }
    return 0
}
