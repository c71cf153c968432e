// swift-tools-version:6.1
// The benchmark is its own package so that `swift build`/`swift test` at the repository root (and CI) never build
// it. Run it with Benchmarks/run.sh.
import PackageDescription

let package = Package(
    name: "gitaly-tap-benchmarks",
    platforms: [.macOS(.v14)],
    dependencies: [
        // The root package: pins the same swift-nio / swift-nio-http2 the tap is built with.
        .package(path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
    ],
    targets: [
        .executableTarget(
            name: "tapbench",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
            ]
        )
    ],
    // Version 5 language mode: the benchmark drives everything from one event loop by design.
    swiftLanguageModes: [.v5]
)
