"""The rclpy layer: ``node`` (dpm_node), message conversions (``image_convert``, ``messages``, ``outputs``),
parameter descriptors (``params``; the table is ``dpm_ros.config``), /tf_static extrinsics (``static_tf``), health
counters (``diagnostics``), offline ``replay`` of a bag through the node's code, the ``soak`` driver and a
test/benchmark ``harness``; ``bag_player`` / ``bag_recorder`` move rosbag2 data over DDS. Importing this package
imports no rclpy; its modules do."""
