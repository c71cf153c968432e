// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "gitaly-tap",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "gitaly-tap", targets: ["gitaly-tap"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        // Pure decoders: bytes in, events out. No channels, no clocks. HPACK is decoded by its own octet decoder
        // (HPACKByteDecoder); the tests compare it with NIOHPACK's.
        .target(
            name: "TapWire",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        // Pure: span model, trace-context propagation, Gitaly attribute extraction.
        .target(
            name: "TapTrace",
            dependencies: ["TapWire"]
        ),
        // Small C helpers: CRC-32 by carry-less multiplication (x86-64 PCLMULQDQ) for the recording's checksums,
        // returning freed memory to the system after a recording burst, opening a recording for direct I/O.
        .target(name: "CTapSupport"),
        // Session recordings: file format, writer, reader, redaction (docs/recording.md).
        .target(
            name: "TapRecord",
            dependencies: ["TapWire", "CTapSupport", .product(name: "NIOCore", package: "swift-nio")]
        ),
        // The I/O edge: listeners, splice, sinks, runtime wiring.
        .target(
            name: "TapServer",
            dependencies: [
                "TapWire",
                "TapTrace",
                "TapRecord",
                "CTapSupport",
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "gitaly-tap",
            dependencies: [
                "TapServer",
                "TapRecord",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            // main.swift holds `@main`; the subcommands live in files beside it.
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ),
        .testTarget(
            name: "TapWireTests",
            dependencies: ["TapWire", .product(name: "NIOHPACK", package: "swift-nio-http2")],
            exclude: ["Fixtures"]
        ),
        .testTarget(name: "TapTraceTests", dependencies: ["TapTrace"], exclude: ["Fixtures"]),
        .testTarget(name: "TapRecordTests", dependencies: ["TapRecord", "TapWire", "CTapSupport"]),
        .testTarget(
            name: "TapServerTests",
            dependencies: [
                "TapServer", "TapWire", "TapTrace", "TapRecord",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ]
)
