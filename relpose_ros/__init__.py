"""relpose_ros: metric 6-DoF pose of a live camera relative to one reference keyframe.

The library (types, geometry, backends, models, data, eval, train, cli) runs without ROS;
only :mod:`relpose_ros.ros` imports rclpy.
"""

__version__ = '0.1.0'
