"""The rclpy layer: ``node`` (dpm_node), pure message conversions (``image_convert``, ``messages``, ``outputs``),
ego-motion accumulation (``odometry``), parameter descriptors (``params``; the table is ``dpm_ros.config``),
/tf_static extrinsics (``static_tf``), health counters (``diagnostics``), and a test/benchmark ``harness``;
``bag_player`` / ``bag_recorder`` move rosbag2 data over DDS. Importing this package imports no rclpy; its modules
do."""
