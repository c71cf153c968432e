#if canImport(Glibc)
import Glibc
#endif

/// Preparing a path for a listening unix socket: replace a stale socket file, never anything else.
enum UnixSocketPath {
    /// Why the path cannot be used, phrased for the user.
    struct Refusal: Error, CustomStringConvertible {
        var description: String
    }

    /// Removes a socket file at `path` that nobody listens on; refuses regular files, directories and live sockets.
    static func prepare(_ path: String) throws(Refusal) {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT { return }
            throw Refusal(description: "cannot inspect '\(path)': \(String(cString: strerror(errno)))")
        }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            throw Refusal(description: "'\(path)' exists and is not a socket; refusing to replace it (choose another --listen path)")
        }
        if isLive(path) {
            throw Refusal(description: "another process is listening on '\(path)'; stop it or choose another --listen path")
        }
        guard unlink(path) == 0 else {
            throw Refusal(description: "cannot remove stale socket '\(path)': \(String(cString: strerror(errno)))")
        }
    }

    /// Lets the owner and its group connect (connect(2) on a unix socket needs write permission).
    static func setGroupAccessible(_ path: String) throws(Refusal) {
        guard chmod(path, 0o660) == 0 else {
            throw Refusal(description: "cannot set the mode of '\(path)': \(String(cString: strerror(errno)))")
        }
    }

    /// True when something listens at `path`: a stream socket accepts a connection, or a datagram socket
    /// accepts a connected datagram socket (a stream probe of a live datagram socket fails with EPROTOTYPE).
    private static func isLive(_ path: String) -> Bool {
        switch probe(path, type: Int32(SOCK_STREAM.rawValue)) {
        case 0: return true
        case EPROTOTYPE: return probe(path, type: Int32(SOCK_DGRAM.rawValue)) == 0
        default: return false
        }
    }

    /// 0 when a socket of `type` connects to `path`, else the errno.
    private static func probe(_ path: String, type: Int32) -> Int32 {
        let fd = socket(AF_UNIX, type, 0)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return ENAMETOOLONG }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        return result == 0 ? 0 : errno
    }
}
