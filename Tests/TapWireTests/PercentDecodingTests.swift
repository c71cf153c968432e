import TapWire
import Testing

@Suite("PercentDecoding.decode")
struct PercentDecodingTests {
    @Test("a value without % is returned unchanged")
    func plainValue() {
        #expect(PercentDecoding.decode("no such thing") == "no such thing")
        #expect(PercentDecoding.decode("") == "")
        #expect(PercentDecoding.decode("ünïcode kept as is") == "ünïcode kept as is")
    }

    @Test("percent-encoded UTF-8 decodes to the original text, as grpcio encodes it")
    func grpcioMessage() {
        let wire = "bad input: 100%25 wrong %E2%80%93 %C3%BCn%C3%AFcode"
        #expect(PercentDecoding.decode(wire) == "bad input: 100% wrong – ünïcode")
    }

    @Test("lower-case and upper-case hex digits are both accepted")
    func hexCase() {
        #expect(PercentDecoding.decode("%c3%BC%2f%2F") == "ü//")
    }

    @Test(
        "malformed escapes are kept literally",
        arguments: [
            ("%", "%"), ("%4", "%4"), ("abc%", "abc%"), ("abc%2", "abc%2"), ("%zz", "%zz"), ("%g1", "%g1"),
            ("%1g", "%1g"), ("100% sure", "100% sure"), ("%%41", "%A"), ("%%", "%%"), ("%-1", "%-1"),
        ])
    func malformedEscapes(input: String, expected: String) {
        #expect(PercentDecoding.decode(input) == expected)
    }

    @Test("an escape at the very end of the value is decoded")
    func escapeAtEnd() {
        #expect(PercentDecoding.decode("end%21") == "end!")
        #expect(PercentDecoding.decode("%41") == "A")
    }

    @Test("invalid UTF-8 after decoding is repaired with replacement characters")
    func invalidUTF8() {
        #expect(PercentDecoding.decode("%FF") == "\u{FFFD}")
        #expect(PercentDecoding.decode("a%C3b") == "a\u{FFFD}b")
        #expect(PercentDecoding.decode("%E2%80") == "\u{FFFD}")
    }

    @Test("an encoded NUL and control characters decode to their code points")
    func controlCharacters() {
        #expect(PercentDecoding.decode("a%00b%0Ac") == "a\u{0}b\nc")
    }

    @Test("non-ASCII text mixed with escapes keeps both")
    func mixedText() {
        #expect(PercentDecoding.decode("ü%20ß") == "ü ß")
    }
}

@Suite("GRPCTimeout.nanoseconds")
struct GRPCTimeoutTests {
    @Test(
        "every unit scales the amount to nanoseconds",
        arguments: [
            ("1H", Int64(3_600_000_000_000)), ("2M", 120_000_000_000), ("3S", 3_000_000_000), ("4m", 4_000_000),
            ("5u", 5_000), ("6n", 6), ("0S", 0), ("30100m", 30_100_000_000), ("00000007n", 7),
        ])
    func units(value: String, nanos: Int64) {
        #expect(GRPCTimeout.nanoseconds(value) == nanos)
    }

    @Test("eight digits are the maximum; nine are rejected")
    func digitLimit() {
        #expect(GRPCTimeout.nanoseconds("99999999n") == 99_999_999)
        #expect(GRPCTimeout.nanoseconds("100000000n") == nil)
    }

    @Test("a value too large for Int64 nanoseconds saturates instead of overflowing")
    func saturates() {
        #expect(GRPCTimeout.nanoseconds("99999999H") == Int64.max)
        // The largest values that still fit: 99999999 M = 6.0e18 ns, 99999999 S = 1.0e17 ns.
        #expect(GRPCTimeout.nanoseconds("99999999M") == 5_999_999_940_000_000_000)
        #expect(GRPCTimeout.nanoseconds("99999999S") == 99_999_999_000_000_000)
    }

    @Test(
        "malformed values give nil",
        arguments: [
            "", "S", "1", "10", "1s", "1h", "1x", "-1S", "+1S", "1.5S", " 1S", "1S ", "1 S", "S1", "１S", "0x10S",
            "1SS",
        ])
    func malformed(value: String) {
        #expect(GRPCTimeout.nanoseconds(value) == nil)
    }
}
