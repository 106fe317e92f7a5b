"""ROS 2 integration: the only package that imports rclpy."""
