"""Byte formats of record files: TFRecord framing with its CRCs (tfrecord), tf.train.Example and
TensorProto without TensorFlow (example), and one image as a record in either layout (record)."""
