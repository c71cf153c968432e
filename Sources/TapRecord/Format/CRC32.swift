import CTapSupport

/// CRC-32 (IEEE 802.3, the polynomial of zlib, gzip and PNG). Runs of 64 bytes and more are folded with carry-less
/// multiplication where the CPU has it (x86-64 PCLMULQDQ, about 10x the table's speed: the recorder checksums every
/// payload byte it writes); the rest, and CPUs without it, use slicing-by-8 tables.
public enum CRC32 {
    /// Whether this CPU folds with PCLMULQDQ.
    public static let hasCarrylessFold: Bool = tap_crc32_fold_available() == 1

    private static let tables: [[UInt32]] = {
        var tables = [[UInt32]](repeating: [UInt32](repeating: 0, count: 256), count: 8)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = c & 1 == 1 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
            tables[0][i] = c
        }
        for i in 0..<256 {
            for t in 1..<8 { tables[t][i] = (tables[t - 1][i] >> 8) ^ tables[0][Int(tables[t - 1][i] & 0xFF)] }
        }
        return tables
    }()

    /// Continues `crc` (0 to start) over `bytes`.
    public static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c = ~crc
        var i = 0
        let n = bytes.count
        if n >= 64, hasCarrylessFold, let base = bytes.baseAddress {
            let folded = n & ~15
            c = tap_crc32_fold(c, base.assumingMemoryBound(to: UInt8.self), folded)
            i = folded
        }
        return ~tableUpdate(c, bytes, from: i)
    }

    /// Continues `crc` over `bytes` with the tables only; for tests that compare both ways.
    public static func tableOnlyUpdate(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        ~tableUpdate(~crc, bytes, from: 0)
    }

    /// The table loop over `bytes[start...]`, on and returning the inverted register.
    private static func tableUpdate(_ register: UInt32, _ bytes: UnsafeRawBufferPointer, from start: Int) -> UInt32 {
        var c = register
        var i = start
        let n = bytes.count
        tables.withUnsafeBufferPointer { t in
            let t0 = t[0], t1 = t[1], t2 = t[2], t3 = t[3], t4 = t[4], t5 = t[5], t6 = t[6], t7 = t[7]
            while i + 8 <= n {
                let lo =
                    c
                    ^ (UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3])
                        << 24)
                c =
                    t7[Int(lo & 0xFF)] ^ t6[Int((lo >> 8) & 0xFF)] ^ t5[Int((lo >> 16) & 0xFF)] ^ t4[Int(lo >> 24)]
                    ^ t3[Int(bytes[i + 4])] ^ t2[Int(bytes[i + 5])] ^ t1[Int(bytes[i + 6])] ^ t0[Int(bytes[i + 7])]
                i += 8
            }
            while i < n {
                c = t0[Int((c ^ UInt32(bytes[i])) & 0xFF)] ^ (c >> 8)
                i += 1
            }
        }
        return c
    }

    /// The checksum of `bytes`.
    public static func checksum(_ bytes: some Collection<UInt8>) -> UInt32 {
        if let result = bytes.withContiguousStorageIfAvailable({ update(0, UnsafeRawBufferPointer($0)) }) {
            return result
        }
        return Array(bytes).withUnsafeBytes { update(0, $0) }
    }
}
