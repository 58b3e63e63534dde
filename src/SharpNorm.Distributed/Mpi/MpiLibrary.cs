using System.Runtime.InteropServices;
using System.Text;

namespace SharpNorm.Distributed.Mpi;

/// <summary>
/// The few Open MPI functions the communicator needs, bound to libmpi.so.40 at run time. Open MPI's predefined handles
/// (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ...) are the addresses of exported globals (ompi_mpi_comm_world, ...), resolved
/// with <see cref="NativeLibrary.GetExport"/>. The library is opened RTLD_GLOBAL first, as Open MPI's plugins expect.
/// </summary>
internal static unsafe class MpiLibrary
{
    public const string FileName = "libmpi.so.40";
    private const int ThreadFunneled = 1;             // MPI_THREAD_FUNNELED: only the thread that initialized calls MPI
    private const int MaxLibraryVersionString = 256;  // MPI_MAX_LIBRARY_VERSION_STRING in Open MPI
    private const int MaxErrorString = 256;           // MPI_MAX_ERROR_STRING

    private static readonly Lazy<Functions> s_functions = new(Load, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The bound functions; throws <see cref="DllNotFoundException"/> or <see cref="NotSupportedException"/> with what to do.</summary>
    public static Functions Api => s_functions.Value;

    internal sealed class Functions
    {
        public delegate* unmanaged<int*, byte***, int, int*, int> InitThread;
        public delegate* unmanaged<int*, int> Initialized;
        public delegate* unmanaged<int*, int> Finalized;
        public delegate* unmanaged<int> Finalize;
        public delegate* unmanaged<nint, int*, int> CommRank;
        public delegate* unmanaged<nint, int*, int> CommSize;
        public delegate* unmanaged<void*, void*, int, nint, nint, nint, int> Allreduce;
        public delegate* unmanaged<void*, void*, int, nint, nint, nint, nint*, int> Iallreduce;
        public delegate* unmanaged<nint*, int*, void*, int> Test;     // MPI_STATUS_IGNORE is null in Open MPI
        public delegate* unmanaged<nint*, void*, int> Wait;
        public delegate* unmanaged<void*, int, nint, int, nint, int> Bcast;
        public delegate* unmanaged<void*, int, nint, void*, int, nint, nint, int> Allgather;
        public delegate* unmanaged<nint, int> Barrier;
        public delegate* unmanaged<nint, int, int> Abort;
        public delegate* unmanaged<double> Wtime;
        public delegate* unmanaged<byte*, int*, int> GetLibraryVersion;
        public delegate* unmanaged<int, byte*, int*, int> ErrorString;
        public nint CommWorld, Float, Double, Int, Long, Sum, Max, Min;
        public string Version = "";

        public nint Type<T>() =>
            typeof(T) == typeof(float) ? Float : typeof(T) == typeof(double) ? Double : typeof(T) == typeof(int) ? Int : Long;

        public nint Operation(ReduceOperation operation) => operation switch
        {
            ReduceOperation.Sum => Sum,
            ReduceOperation.Max => Max,
            _ => Min,
        };

        /// <summary>Throws <see cref="MpiException"/> for a non-zero MPI return code, naming the call.</summary>
        public void Check(int code, string call)
        {
            if (code == 0) return;
            byte* text = stackalloc byte[MaxErrorString];
            int length = 0;
            string message = ErrorString(code, text, &length) == 0 ? Encoding.ASCII.GetString(text, Math.Clamp(length, 0, MaxErrorString)) : "(no error string)";
            throw new MpiException($"{call} failed with MPI error {code}: {message}", code);
        }
    }

    [DllImport("libc", EntryPoint = "dlopen")]
    private static extern nint DlOpen(string file, int mode);

    private static Functions Load()
    {
        const int RtldNow = 2, RtldGlobal = 0x100;
        // Open MPI's components resolve libmpi's symbols from the global namespace, as mpi4py loads it.
        if (OperatingSystem.IsLinux()) DlOpen(FileName, RtldNow | RtldGlobal);
        if (!NativeLibrary.TryLoad(FileName, out nint library))
            throw new DllNotFoundException($"{FileName} (Open MPI) could not be loaded. Install it (Debian: apt-get install openmpi-bin libopenmpi-dev) and start the program with mpirun.");

        var f = new Functions();
        nint Export(string name) => NativeLibrary.TryGetExport(library, name, out nint address) ? address : 0;
        f.GetLibraryVersion = (delegate* unmanaged<byte*, int*, int>)Export("MPI_Get_library_version");
        if (f.GetLibraryVersion != null)
        {
            byte* text = stackalloc byte[MaxLibraryVersionString];
            int length = 0;
            if (f.GetLibraryVersion(text, &length) == 0) f.Version = Encoding.ASCII.GetString(text, Math.Clamp(length, 0, MaxLibraryVersionString)).Trim('\0', ' ', '\n');
        }
        f.CommWorld = Export("ompi_mpi_comm_world");
        if (f.CommWorld == 0)
            throw new NotSupportedException($"{FileName} is not Open MPI (no ompi_mpi_comm_world; library reports \"{f.Version}\"): SharpNorm.Distributed binds Open MPI's handles.");

        nint Required(string name) => Export(name) is var address && address != 0 ? address : throw new NotSupportedException($"{FileName} ({f.Version}) has no {name}.");
        f.InitThread = (delegate* unmanaged<int*, byte***, int, int*, int>)Required("MPI_Init_thread");
        f.Initialized = (delegate* unmanaged<int*, int>)Required("MPI_Initialized");
        f.Finalized = (delegate* unmanaged<int*, int>)Required("MPI_Finalized");
        f.Finalize = (delegate* unmanaged<int>)Required("MPI_Finalize");
        f.CommRank = (delegate* unmanaged<nint, int*, int>)Required("MPI_Comm_rank");
        f.CommSize = (delegate* unmanaged<nint, int*, int>)Required("MPI_Comm_size");
        f.Allreduce = (delegate* unmanaged<void*, void*, int, nint, nint, nint, int>)Required("MPI_Allreduce");
        f.Iallreduce = (delegate* unmanaged<void*, void*, int, nint, nint, nint, nint*, int>)Required("MPI_Iallreduce");
        f.Test = (delegate* unmanaged<nint*, int*, void*, int>)Required("MPI_Test");
        f.Wait = (delegate* unmanaged<nint*, void*, int>)Required("MPI_Wait");
        f.Bcast = (delegate* unmanaged<void*, int, nint, int, nint, int>)Required("MPI_Bcast");
        f.Allgather = (delegate* unmanaged<void*, int, nint, void*, int, nint, nint, int>)Required("MPI_Allgather");
        f.Barrier = (delegate* unmanaged<nint, int>)Required("MPI_Barrier");
        f.Abort = (delegate* unmanaged<nint, int, int>)Required("MPI_Abort");
        f.Wtime = (delegate* unmanaged<double>)Required("MPI_Wtime");
        f.ErrorString = (delegate* unmanaged<int, byte*, int*, int>)Required("MPI_Error_string");
        f.Float = Required("ompi_mpi_float");
        f.Double = Required("ompi_mpi_double");
        f.Int = Required("ompi_mpi_int");
        f.Long = Required("ompi_mpi_long");
        f.Sum = Required("ompi_mpi_op_sum");
        f.Max = Required("ompi_mpi_op_max");
        f.Min = Required("ompi_mpi_op_min");
        return f;
    }

    public const int RequiredThreadLevel = ThreadFunneled;
}

/// <summary>An MPI call that returned an error code.</summary>
public sealed class MpiException(string message, int errorCode) : Exception(message)
{
    public int ErrorCode { get; } = errorCode;
}
