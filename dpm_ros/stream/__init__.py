"""The per-pair core, without ROS: which frames pair (``pairing``), metric scale (``scale``), object ids
(``tracking``), ego-motion accumulated into odometry (``odometry``). Plain numbers and arrays in, plain results out;
``dpm_ros/ros/`` turns them into messages. Nothing here imports rclpy, ROS messages or ``dpm_ros.ros``
(``test/test_layout.py`` checks it)."""
