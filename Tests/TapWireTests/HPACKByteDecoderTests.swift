import NIOCore
import NIOHPACK
@testable import TapWire
import Testing

private func hex(_ text: String) -> ByteBuffer {
    let digits = Array(text.filter { !$0.isWhitespace }.utf8)
    var bytes: [UInt8] = []
    var i = 0
    while i + 1 < digits.count {
        bytes.append(UInt8(String(decoding: digits[i...i + 1], as: UTF8.self), radix: 16)!)
        i += 2
    }
    return ByteBuffer(bytes: bytes)
}

private func pairs(_ fields: [RawHeaderField]) -> [String] {
    fields.map { "\($0.name): \(String(decoding: $0.value, as: UTF8.self))" }
}

@Suite("HPACKByteDecoder")
struct HPACKByteDecoderTests {
    @Test("RFC 7541 C.4: three requests with Huffman coding share the dynamic table")
    func rfcHuffmanRequests() throws {
        var decoder = HPACKByteDecoder()
        #expect(
            try pairs(decoder.decode(hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")))
                == [":method: GET", ":scheme: http", ":path: /", ":authority: www.example.com"])
        #expect(
            try pairs(decoder.decode(hex("8286 84be 5886 a8eb 1064 9cbf")))
                == [":method: GET", ":scheme: http", ":path: /", ":authority: www.example.com", "cache-control: no-cache"])
        #expect(
            try pairs(decoder.decode(hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")))
                == [
                    ":method: GET", ":scheme: https", ":path: /index.html", ":authority: www.example.com",
                    "custom-key: custom-value",
                ])
    }

    @Test("RFC 7541 C.5: responses evict entries from a 256-octet table")
    func rfcEviction() throws {
        var decoder = HPACKByteDecoder(maxDynamicTableLength: 256)
        let first = try decoder.decode(
            hex(
                """
                4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32
                3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d
                """))
        #expect(pairs(first).first == ":status: 302")
        let second = try decoder.decode(hex("4803 3330 37c1 c0bf"))
        #expect(
            pairs(second) == [
                ":status: 307", "cache-control: private", "date: Mon, 21 Oct 2013 20:13:21 GMT",
                "location: https://www.example.com",
            ])
    }

    @Test("values that are not UTF-8 come out exactly, also when indexed from the dynamic table")
    func binaryValues() throws {
        let value: [UInt8] = [0x00, 0xFE, 0xFF, 0x80, 0x01, 0xC3]
        var block: [UInt8] = [0x40, 0x05] + Array("k-bin".utf8) + [UInt8(value.count)] + value
        block += [0xBE]  // index 62: the entry just added
        var decoder = HPACKByteDecoder()
        let fields = try decoder.decode(ByteBuffer(bytes: block))
        #expect(fields.map(\.value) == [value, value])
        #expect(fields.map(\.name) == ["k-bin", "k-bin"])
    }

    @Test("agrees with NIOHPACK's encoder over many random text header lists")
    func agreesWithNIOHPACK() throws {
        var generator = SeededGenerator(seed: 42)
        var encoder = HPACKEncoder(allocator: ByteBufferAllocator(), useHuffmanEncoding: true)
        var decoder = HPACKByteDecoder()
        for round in 0..<300 {
            let count = Int.random(in: 1...12, using: &generator)
            var headers: [(String, String)] = []
            for _ in 0..<count {
                let name = "k\(Int.random(in: 0..<20, using: &generator))"
                let length = Int.random(in: 0..<200, using: &generator)
                let value = String((0..<length).map { _ in Character(Unicode.Scalar(UInt8.random(in: 0x20...0x7E, using: &generator))) })
                headers.append((name, value))
            }
            var buffer = ByteBuffer()
            try encoder.encode(headers: HPACKHeaders(headers), to: &buffer)
            let decoded = try decoder.decode(buffer)
            #expect(decoded.map(\.name) == headers.map(\.0), "round \(round)")
            #expect(decoded.map { String(decoding: $0.value, as: UTF8.self) } == headers.map(\.1), "round \(round)")
        }
    }

    @Test(
        "decodes into a HeaderBlock what NIOHPACK's decoder decodes: Huffman on and off, a small table resized mid-way, multi-byte UTF-8, never-indexed fields",
        arguments: [(true, 256), (false, 256), (true, 4096)])
    func headerBlockAgreesWithNIOHPACKDecoder(huffman: Bool, tableSize: Int) throws {
        var generator = SeededGenerator(seed: UInt64(tableSize) + (huffman ? 1 : 0))
        var encoder = HPACKEncoder(
            allocator: ByteBufferAllocator(), useHuffmanEncoding: huffman, maxDynamicTableSize: tableSize)
        var reference = HPACKDecoder(allocator: ByteBufferAllocator(), maxDynamicTableSize: tableSize)
        var decoder = HPACKByteDecoder(maxDynamicTableLength: tableSize)
        var block = HeaderBlock()
        let alphabet: [Character] = Array("abcXYZ019 -_%/é✓")
        var mismatches = 0
        for round in 0..<400 {
            if round == 200 { try encoder.setDynamicTableSize(tableSize / 2) }
            var headers = HPACKHeaders()
            for _ in 0..<Int.random(in: 1...10, using: &generator) {
                let name = [":path", ":authority", "content-type", "grpc-status", "x-gitlab-correlation-id", "k\(Int.random(in: 0..<12, using: &generator))"]
                    .randomElement(using: &generator)!
                let value = String((0..<Int.random(in: 0..<90, using: &generator)).map { _ in alphabet.randomElement(using: &generator)! })
                let indexing: HPACKIndexing = [.indexable, .nonIndexable, .neverIndexed].randomElement(using: &generator)!
                headers.add(name: name, value: value, indexing: indexing)
            }
            var buffer = ByteBuffer()
            try encoder.encode(headers: headers, to: &buffer)
            var copy = buffer
            let expected = try reference.decodeHeaders(from: &copy)
            try decoder.decode(buffer, into: &block)
            let got = (0..<block.count).map { "\(block.name(at: $0))=\(block.value(at: $0))" }
            if got != expected.map({ "\($0.name)=\($0.value)" }) { mismatches += 1 }
            if block.first(name: "grpc-status") != expected.first(name: "grpc-status") { mismatches += 1 }
        }
        #expect(mismatches == 0)
    }

    @Test("the Huffman decoder reads every octet back from NIOHPACK's encoding of it")
    func huffmanEveryOctet() throws {
        // Each octet alone and all of them in one string: codes of every length, padding of every length.
        var encoder = HPACKEncoder(allocator: ByteBufferAllocator(), useHuffmanEncoding: true)
        var decoder = HPACKByteDecoder()
        var block = HeaderBlock()
        for octet in UInt8(0x20)...UInt8(0x7E) {
            let value = String(UnicodeScalar(octet))
            var buffer = ByteBuffer()
            try encoder.encode(headers: HPACKHeaders([("x\(octet)", value)]), to: &buffer)
            try decoder.decode(buffer, into: &block)
            #expect(block.value(at: 0) == value)
        }
    }

    @Test("hostile blocks throw instead of crashing")
    func hostile() {
        var generator = SeededGenerator(seed: 9)
        for _ in 0..<3000 {
            let bytes = (0..<Int.random(in: 1..<40, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            var decoder = HPACKByteDecoder()
            _ = try? decoder.decode(ByteBuffer(bytes: bytes))
        }
        var decoder = HPACKByteDecoder()
        #expect(throws: WireDecodingError.self) { try decoder.decode(ByteBuffer(bytes: [0x80])) }
        #expect(throws: WireDecodingError.self) { try decoder.decode(ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])) }
        #expect(throws: WireDecodingError.self) { try decoder.decode(ByteBuffer(bytes: [0x3F, 0xE1, 0x3F])) }
        // Huffman string whose padding is not all ones.
        #expect(throws: WireDecodingError.self) { try decoder.decode(ByteBuffer(bytes: [0x00, 0x81, 0x61, 0x81, 0x00])) }
    }
}

@Suite("HeaderStrings")
struct HeaderStringsTests {
    func make(_ bytes: [UInt8], _ strings: inout HeaderStrings) -> String {
        bytes.withUnsafeBytes { strings.string($0) }
    }

    @Test("gives what String(decoding:) gives for every input, repeated or not, colliding or not, valid UTF-8 or not")
    func sameAsDecoding() {
        var strings = HeaderStrings()
        var generator = SystemRandomNumberGenerator()
        // Same length, same first and last 8 octets, different middles: the same slot, told apart by the comparison.
        let twins = ["application/grpc+proto-a-middle", "application/grpc+proto-b-middle"].map { Array($0.utf8) }
        var inputs: [[UInt8]] = twins + [Array("short".utf8), [], [0xFF, 0xFE] + Array(repeating: 0x41, count: 20)]
        inputs += (0..<200).map { _ in
            (0..<Int.random(in: 0...300, using: &generator)).map { _ in UInt8.random(in: 0x20...0x7E, using: &generator) }
        }
        inputs.append(Array("gitaly-feature-é-日本-".utf8) + Array(repeating: 0x7A, count: 10))
        for round in 0..<3 {
            for bytes in round == 1 ? inputs.reversed() : inputs {
                #expect(make(bytes, &strings) == String(decoding: bytes, as: UTF8.self))
            }
        }
        #expect(make(twins[0], &strings) == "application/grpc+proto-a-middle")
        #expect(make(twins[1], &strings) == "application/grpc+proto-b-middle")
    }

    @Test("a repeated name or value is the same string, not a new one")
    func reuses() {
        var strings = HeaderStrings()
        let bytes = Array("x-gitlab-correlation-id".utf8)
        let first = make(bytes, &strings)
        let second = make(bytes, &strings)
        // Equal strings that share storage have identical raw bits; a fresh copy would not.
        #expect(unsafeBitCast(first, to: (UInt64, UInt64).self) == unsafeBitCast(second, to: (UInt64, UInt64).self))
    }
}
