/// Builds protobuf wire bytes by hand from field numbers, so fixtures do not need generated code.
enum ProtobufFixture {
    static func varint(_ value: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        var rest = value
        while rest >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        bytes.append(UInt8(rest))
        return bytes
    }

    static func tag(_ field: UInt64, wireType: UInt64) -> [UInt8] {
        varint(field << 3 | wireType)
    }

    static func varintField(_ field: UInt64, _ value: UInt64) -> [UInt8] {
        tag(field, wireType: 0) + varint(value)
    }

    static func fixed64Field(_ field: UInt64, _ value: UInt64) -> [UInt8] {
        tag(field, wireType: 1) + (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }

    static func fixed32Field(_ field: UInt64, _ value: UInt32) -> [UInt8] {
        tag(field, wireType: 5) + (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }

    static func bytesField(_ field: UInt64, _ payload: [UInt8]) -> [UInt8] {
        tag(field, wireType: 2) + varint(UInt64(payload.count)) + payload
    }

    static func stringField(_ field: UInt64, _ text: String) -> [UInt8] {
        bytesField(field, Array(text.utf8))
    }

    /// `gitaly.Repository` with the fields the tests use.
    static func repository(
        storage: String? = "default",
        relativePath: String? = "@hashed/ab/cd/abcd.git",
        glRepository: String? = "project-1",
        glProjectPath: String? = "group/proj"
    ) -> [UInt8] {
        var bytes: [UInt8] = []
        if let storage { bytes += stringField(2, storage) }
        if let relativePath { bytes += stringField(3, relativePath) }
        if let glRepository { bytes += stringField(6, glRepository) }
        if let glProjectPath { bytes += stringField(8, glProjectPath) }
        return bytes
    }
}

/// SplitMix64: a tiny seeded generator so fuzz-style tests are repeatable.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
