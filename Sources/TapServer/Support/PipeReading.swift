import Foundation

/// Reading a child process's pipe to its end.
public enum PipeReading {
    /// Reads `handle` to EOF, retrying reads a signal interrupted (Foundation's `readDataToEndOfFile` traps on EINTR).
    public static func readAll(_ handle: FileHandle) -> Data {
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(handle.fileDescriptor, $0.baseAddress!, $0.count) }
            if n > 0 {
                data.append(contentsOf: buffer[0..<n])
            } else if n < 0, errno == EINTR {
                continue
            } else {
                return data
            }
        }
    }
}
