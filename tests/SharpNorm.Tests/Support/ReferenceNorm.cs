namespace SharpNorm.Tests.Support;

/// <summary>
/// Plain double-precision batch-statistics normalization, written from the definitions with two-pass statistics:
/// the independent reference for shapes too large for fixtures.
/// </summary>
public static class ReferenceNorm
{
    /// <param name="groupOf">Statistics group of each element.</param>
    /// <param name="channelOf">Affine parameter index of each element.</param>
    public static (double[] y, double[] dx, double[] dgamma, double[] dbeta) TrainingStep(
        double[] x, double[] dy, int[] groupOf, int[] channelOf, double[] gamma, double[] beta, double eps)
    {
        int groups = groupOf.Max() + 1, channels = gamma.Length;
        var count = new double[groups];
        var mean = new double[groups];
        var variance = new double[groups];
        for (int i = 0; i < x.Length; i++) { count[groupOf[i]]++; mean[groupOf[i]] += x[i]; }
        for (int g = 0; g < groups; g++) mean[g] /= count[g];
        for (int i = 0; i < x.Length; i++) variance[groupOf[i]] += Math.Pow(x[i] - mean[groupOf[i]], 2);
        for (int g = 0; g < groups; g++) variance[g] /= count[g];

        var xhat = new double[x.Length];
        var y = new double[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            xhat[i] = (x[i] - mean[groupOf[i]]) / Math.Sqrt(variance[groupOf[i]] + eps);
            y[i] = xhat[i] * gamma[channelOf[i]] + beta[channelOf[i]];
        }

        var sumG = new double[groups];
        var sumGXhat = new double[groups];
        var dgamma = new double[channels];
        var dbeta = new double[channels];
        for (int i = 0; i < x.Length; i++)
        {
            double gi = dy[i] * gamma[channelOf[i]];
            sumG[groupOf[i]] += gi;
            sumGXhat[groupOf[i]] += gi * xhat[i];
            dgamma[channelOf[i]] += dy[i] * xhat[i];
            dbeta[channelOf[i]] += dy[i];
        }
        var dx = new double[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            int g = groupOf[i];
            dx[i] = (dy[i] * gamma[channelOf[i]] - sumG[g] / count[g] - xhat[i] * sumGXhat[g] / count[g]) / Math.Sqrt(variance[g] + eps);
        }
        return (y, dx, dgamma, dbeta);
    }

    public static int[] ChannelOf(nint[] shape)
    {
        int c = (int)shape[1], spatial = 1;
        for (int d = 2; d < shape.Length; d++) spatial *= (int)shape[d];
        return Enumerable.Range(0, (int)shape[0] * c * spatial).Select(i => i / spatial % c).ToArray();
    }

    /// <summary>RMSNorm over rows of rowLength elements, from its definition y = x / sqrt(mean(x²) + eps) * gamma.</summary>
    public static (double[] y, double[] dx, double[] dgamma) RmsTrainingStep(double[] x, double[] dy, int rowLength, double[] gamma, double eps)
    {
        var y = new double[x.Length];
        var dx = new double[x.Length];
        var dgamma = new double[rowLength];
        for (int start = 0; start < x.Length; start += rowLength)
        {
            double meanSquare = 0;
            for (int j = 0; j < rowLength; j++) meanSquare += x[start + j] * x[start + j];
            meanSquare /= rowLength;
            double r = 1 / Math.Sqrt(meanSquare + eps), sumGXhat = 0;
            for (int j = 0; j < rowLength; j++)
            {
                double xhat = x[start + j] * r;
                y[start + j] = xhat * gamma[j];
                sumGXhat += dy[start + j] * gamma[j] * xhat;
                dgamma[j] += dy[start + j] * xhat;
            }
            for (int j = 0; j < rowLength; j++)
                dx[start + j] = r * (dy[start + j] * gamma[j] - x[start + j] * r * sumGXhat / rowLength);
        }
        return (y, dx, dgamma);
    }
}
