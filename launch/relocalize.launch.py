"""Launch relocalize_node.

    ros2 launch relpose_ros relocalize.launch.py backend:=rgbd device:=cuda \
        image:=/camera/color/image_raw camera_info:=/camera/color/camera_info \
        depth:=/camera/aligned_depth_to_color/image_raw

Arguments: backend, device (empty = the params file's value), params_file (default: the installed
config/relocalize.yaml), namespace, use_sim_time, and one remap argument per input topic
(image, camera_info, depth, reference_image, reference_camera_info, reference_depth).
"""
import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# launch argument -> the node's (relative) input topic it remaps
TOPIC_ARGUMENTS = {
    'image': 'image',
    'camera_info': 'camera_info',
    'depth': 'depth',
    'reference_image': 'reference/image',
    'reference_camera_info': 'reference/camera_info',
    'reference_depth': 'reference/depth',
}


def _node_parameters(params_file: str) -> dict:
    """The ros__parameters of every section of the params file, merged (so any namespace works)."""
    with open(params_file, encoding='utf-8') as f:
        content = yaml.safe_load(f) or {}
    merged = {}
    for section in content.values():
        if isinstance(section, dict) and isinstance(section.get('ros__parameters'), dict):
            merged.update(section['ros__parameters'])
    return merged


def _launch_setup(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    parameters = _node_parameters(arg('params_file'))
    for name in ('backend', 'device'):
        if arg(name):
            parameters[name] = arg(name)
    parameters['use_sim_time'] = arg('use_sim_time').lower() in ('true', '1', 'yes')
    remappings = [(topic, arg(name)) for name, topic in TOPIC_ARGUMENTS.items() if arg(name)]
    return [Node(
        package='relpose_ros',
        executable='relocalize_node',
        name='relocalize_node',
        namespace=arg('namespace') or None,
        parameters=[parameters],
        remappings=remappings,
        output='screen',
        emulate_tty=True,
    )]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory('relpose_ros'), 'config', 'relocalize.yaml')
    arguments = [
        DeclareLaunchArgument('backend', default_value='', description='backend name (empty: the params file)'),
        DeclareLaunchArgument('device', default_value='', description='auto | cpu | cuda (empty: the params file)'),
        DeclareLaunchArgument('params_file', default_value=default_params, description='node parameters YAML'),
        DeclareLaunchArgument('namespace', default_value='', description='namespace of the node'),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='use /clock'),
    ]
    arguments += [DeclareLaunchArgument(name, default_value='', description=f'topic remapped to {topic} '
                                        '(empty: no remap)') for name, topic in TOPIC_ARGUMENTS.items()]
    return LaunchDescription(arguments + [OpaqueFunction(function=_launch_setup)])
