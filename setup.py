"""relpose_ros: map-free metric relocalisation for ROS 2 (ament_python, also pip-installable)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'relpose_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, PACKAGE + '.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml')),
        ('share/' + PACKAGE + '/config/train', glob('config/train/*.yaml')),
    ],
    python_requires='>=3.10',
    install_requires=[
        'setuptools',
        'numpy',
        'scipy',
        'pyyaml',
        'opencv-python-headless',
        'transforms3d',
        'torch',
        'kornia',
        'rosbags',
        'matplotlib',
        'tqdm',
    ],
    extras_require={
        'train': ['lightning'],
        'test': ['pytest', 'pytest-timeout', 'hypothesis', 'lightning'],
    },
    zip_safe=True,
    maintainer='relpose_ros developers',
    maintainer_email='dev@relpose-ros.org',
    description='Map-free metric relocalisation: live camera pose relative to one reference keyframe.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'relocalize_node = relpose_ros.ros.node:main',
            'relpose = relpose_ros.cli:main',
        ],
    },
)
