"""``dpm import SRC --out BAG.mcap``: images (folder, glob, TUM rgb.txt) or a video → a rosbag2 for the node."""
from __future__ import annotations


def add_arguments(parser) -> None:
    import argparse

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  dpm import frames/ --out seq.mcap --rate 15 --K 525,525,319.5,239.5\n"
        "  dpm import 'run1/*.jpg' --out seq.mcap --stamps-from-names --format jpeg --resize 320x240\n"
        "  dpm import clip.mp4 --out clip.mcap --camera-info calib.yaml --resize 0.5\n"
        "  dpm import tum/rgb.txt --out tum.mcap --depth tum/depth.txt --depth-scale 5000 --camera-info tum.yaml\n"
        "then: dpm replay seq.mcap --out outputs.mcap   |   dpm play seq.mcap  (with the node running)")
    parser.add_argument("src", help="folder of images, quoted glob ('dir/*.png'), video file, or TUM-style rgb.txt "
                        "('timestamp filename' lines)")
    parser.add_argument("--out", required=True, help="output: BAG.mcap (one file) or a rosbag2 folder name")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")
    g = parser.add_argument_group("images")
    g.add_argument("--topic", default="/camera/image_raw", help="image topic (default /camera/image_raw); "
                   "jpeg/png go to TOPIC/compressed (image_transport's convention)")
    g.add_argument("--format", dest="fmt", default="raw", choices=("raw", "jpeg", "png"),
                   help="raw: sensor_msgs/Image rgb8; jpeg/png: sensor_msgs/CompressedImage (smaller bags)")
    g.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1..100 (default 90)")
    g.add_argument("--resize", default=None, metavar="WxH|F", help="resize to WxH pixels or by a factor F "
                   "(intrinsics are scaled to match)")
    g.add_argument("--frame-id", default="camera_optical_frame", help="header frame_id (default camera_optical_frame)")
    g.add_argument("--every", type=int, default=1, metavar="N", help="keep every N-th frame")
    g.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    g.add_argument("--skip-unreadable", action="store_true",
                   help="skip (and list) unreadable image files instead of stopping at the first")
    t = parser.add_argument_group("stamps (default: --rate, or the video's own rate, or 10 Hz)")
    t.add_argument("--rate", type=float, default=None, metavar="HZ", help="frames per second of the stamps")
    t.add_argument("--start", type=float, default=1.0, metavar="S", help="stamp of the first frame with --rate "
                   "(default 1.0 s)")
    t.add_argument("--stamps-from-names", nargs="?", const="s", default=None, choices=("s", "ms", "us", "ns"),
                   help="the last number in each file name is its stamp, in this unit (default s)")
    t.add_argument("--timestamps", default=None, metavar="FILE", help="one stamp in seconds per line (first column), "
                   "one line per source frame")
    c = parser.add_argument_group("camera intrinsics (optional; without them the node estimates the focal)")
    c.add_argument("--K", default=None, metavar="FX,FY,CX,CY", help="pinhole intrinsics of the source images, pixels")
    c.add_argument("--camera-info", default=None, metavar="YAML", help="ROS camera calibration YAML "
                   "(camera_info_manager format); scaled from its image size to the written one")
    c.add_argument("--camera-info-topic", default=None, help="default: <namespace of --topic>/camera_info")
    d = parser.add_argument_group("depth (optional; for the node's scale_source: depth)")
    d.add_argument("--depth", default=None, metavar="SRC", help="depth images: folder, glob (paired in sorted order) "
                   "or TUM depth.txt (paired by nearest stamp, ≤ 20 ms)")
    d.add_argument("--depth-scale", type=float, default=1000.0, help="depth image units per metre (1000 = mm, TUM "
                   "uses 5000; 1 for float images in metres)")
    d.add_argument("--depth-encoding", default="16UC1", choices=("16UC1", "32FC1"),
                   help="written as 16UC1 millimetres or 32FC1 metres")
    d.add_argument("--depth-topic", default="/camera/depth/image_raw", help="default /camera/depth/image_raw")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args) -> int:
    import sys
    from pathlib import Path

    from dpm_ros.importer import ImportOptions, import_frames, load_calibration_yaml, parse_K, parse_size

    if args.K and args.camera_info:
        raise ValueError("give --K or --camera-info, not both")
    if args.jpeg_quality < 1 or args.jpeg_quality > 100:
        raise ValueError(f"--jpeg-quality must be 1..100, got {args.jpeg_quality}")
    if args.stamps_from_names and args.timestamps:
        raise ValueError("give --stamps-from-names or --timestamps, not both")
    if args.depth_scale <= 0:
        raise ValueError(f"--depth-scale must be > 0, got {args.depth_scale}")
    cal = parse_K(args.K) if args.K else load_calibration_yaml(Path(args.camera_info)) if args.camera_info else None
    unit = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
    opt = ImportOptions(topic=args.topic, fmt=args.fmt, jpeg_quality=args.jpeg_quality, frame_id=args.frame_id,
                        rate=args.rate, start=args.start,
                        stamps_from_names=unit[args.stamps_from_names] if args.stamps_from_names else None,
                        timestamps=Path(args.timestamps) if args.timestamps else None,
                        resize=parse_size(args.resize) if args.resize else None, calibration=cal,
                        camera_info_topic=args.camera_info_topic, depth=args.depth, depth_scale=args.depth_scale,
                        depth_encoding=args.depth_encoding, depth_topic=args.depth_topic,
                        max_frames=args.max_frames, every=args.every, skip_unreadable=args.skip_unreadable,
                        progress=not args.no_progress)
    stats = import_frames(args.src, args.out, opt, overwrite=args.overwrite)
    h, w = stats.size_hw
    topics = ", ".join(f"{t}: {n}" for t, n in sorted(stats.topics.items()))
    span = (stats.last_stamp - stats.first_stamp) * 1e-9
    print(f"dpm import: {stats.frames} frames {w}x{h}, stamps {stats.first_stamp * 1e-9:.3f}.."
          f"{stats.last_stamp * 1e-9:.3f} s "
          f"({(stats.frames - 1) / span if span > 0 else 0:.2f} Hz) → {args.out} ({topics})", file=sys.stderr)
    if stats.K is not None:
        K = stats.K
        print(f"dpm import: K fx {K[0, 0]:.2f} fy {K[1, 1]:.2f} cx {K[0, 2]:.2f} cy {K[1, 2]:.2f} (pixels of the "
              f"written images)", file=sys.stderr)
    for f, reason in stats.skipped:
        print(f"dpm import: skipped {f}: {reason}", file=sys.stderr)
    if stats.skipped:
        print(f"dpm import: {len(stats.skipped)} unreadable file(s) skipped", file=sys.stderr)
    return 0
